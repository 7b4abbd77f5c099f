// JVM ground truth for leakhound: each simulated connection keeps 64 KiB of native memory
// from Unsafe.allocateMemory that is never freed. Protocol of truth.h: `ready <pid>`, wait for
// a line, allocate, print `truth JitLeak.acceptConnection <bytes>` and `done`, wait for a line.
//
// Before `ready` the method is warmed up (allocated and freed) until HotSpot has compiled it,
// as a long-running service's would be: interpreted frames have no name of their own.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.lang.reflect.Field;
import sun.misc.Unsafe;

public class JitLeak {
    static final long CONNECTION_BYTES = 64 * 1024;
    // An array, not a list: a list's first growth after warm-up would send the compiled method
    // back to the interpreter (an uncommon trap) until HotSpot compiles it again.
    static long[] open;
    static int count;
    static Unsafe unsafe;

    static void acceptConnection(int id) {
        long address = unsafe.allocateMemory(CONNECTION_BYTES);
        unsafe.putInt(address, id);
        open[count++] = address;
    }

    static void closeAll() {
        while (count > 0) {
            unsafe.freeMemory(open[--count]);
        }
    }

    static void warmUp() throws InterruptedException {
        for (int round = 0; round < 500; round++) {
            for (int id = 0; id < 100; id++) {
                acceptConnection(id);
            }
            closeAll();
        }
        // Background compilation finishes on its own threads; give it a moment.
        Thread.sleep(300);
    }

    static void serve(int connections) {
        for (int id = 0; id < connections; id++) {
            acceptConnection(id);
        }
    }

    public static void main(String[] args) throws Exception {
        Field field = Unsafe.class.getDeclaredField("theUnsafe");
        field.setAccessible(true);
        unsafe = (Unsafe) field.get(null);
        int connections = args.length > 0 ? Integer.parseInt(args[0]) : 200;
        open = new long[Math.max(connections, 100)];
        warmUp();
        BufferedReader in = new BufferedReader(new InputStreamReader(System.in));
        System.out.println("ready " + ProcessHandle.current().pid());
        in.readLine();
        serve(connections);
        System.out.println("truth JitLeak.acceptConnection " + count * CONNECTION_BYTES);
        System.out.println("done");
        in.readLine();
    }
}
