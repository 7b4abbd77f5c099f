import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.ByteBuffer;
import java.util.ArrayList;
import java.util.List;
import java.util.zip.Deflater;

/**
 * A JVM whose memory grows in three places: a byte[] cache on the Java heap, direct buffers
 * and zlib state in native memory. Protocol of truth.h: "ready <pid>", wait for a line, wait a
 * second, grow for SECONDS (one step every 100 ms), print truth lines and "done", wait for a line, exit.
 *
 * Truth lines: cache_bytes (the byte[] bytes the cache keeps), direct_bytes (direct buffer
 * capacity kept), deflaters (zlib streams kept open).
 */
public class HeapGrowth {
    /** Just under a 1 MiB G1 region, so each array fills one humongous region. */
    static final int ENTRY = 1000 * 1024;
    static final int DIRECT = 64 * 1024;
    static final List<byte[]> cache = new ArrayList<>();
    static final List<ByteBuffer> direct = new ArrayList<>();
    static final List<Deflater> deflaters = new ArrayList<>();

    static void cacheEntry(int n) {
        byte[] entry = new byte[ENTRY];
        // Touch every page, as a cache filled from the network would.
        for (int i = 0; i < ENTRY; i += 4096) {
            entry[i] = (byte) n;
        }
        cache.add(entry);
    }

    static void keepDirect() {
        ByteBuffer buffer = ByteBuffer.allocateDirect(DIRECT);
        for (int i = 0; i < DIRECT; i += 4096) {
            buffer.put(i, (byte) 1);
        }
        direct.add(buffer);
    }

    static void keepDeflater() {
        Deflater deflater = new Deflater(9);
        deflater.setInput(new byte[4096]);
        deflater.finish();
        deflater.deflate(new byte[8192]);
        deflaters.add(deflater);
    }

    public static void main(String[] args) throws Exception {
        double seconds = args.length > 0 ? Double.parseDouble(args[0]) : 6;
        BufferedReader stdin = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready " + ProcessHandle.current().pid());
        System.out.flush();
        if (stdin.readLine() == null) {
            return;
        }
        // A second first, so that the tracer's first sample comes before any growth.
        Thread.sleep(1000);
        long end = System.nanoTime() + (long) (seconds * 1e9);
        int n = 0;
        while (System.nanoTime() < end) {
            cacheEntry(n);
            keepDirect();
            keepDeflater();
            n++;
            Thread.sleep(100);
        }
        System.out.println("truth cache_bytes " + (long) cache.size() * ENTRY);
        System.out.println("truth direct_bytes " + (long) direct.size() * DIRECT);
        System.out.println("truth deflaters " + deflaters.size());
        System.out.println("done");
        System.out.flush();
        stdin.readLine();
    }
}
