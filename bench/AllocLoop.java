// The JVM target of `cargo xtask bench`: Unsafe.allocateMemory(64) + freeMemory pairs, called
// through a few Java frames, timed by the JVM itself. Protocol: `ready PID`, wait for a line,
// run, print `ns <per pair>`.

import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.lang.reflect.Field;
import sun.misc.Unsafe;

public class AllocLoop {
    static Unsafe unsafe;

    static long pair() {
        long address = unsafe.allocateMemory(64);
        unsafe.freeMemory(address);
        return address;
    }

    static long handle(int requests) {
        long seen = 0;
        for (int i = 0; i < requests; i++) {
            seen ^= pair();
        }
        return seen;
    }

    public static void main(String[] args) throws Exception {
        Field field = Unsafe.class.getDeclaredField("theUnsafe");
        field.setAccessible(true);
        unsafe = (Unsafe) field.get(null);
        int pairs = Integer.parseInt(args[0]);
        // Compiled before the measurement, as a running service's would be.
        handle(300_000);
        System.out.println("ready " + ProcessHandle.current().pid());
        new BufferedReader(new InputStreamReader(System.in)).readLine();
        long start = System.nanoTime();
        long seen = handle(pairs);
        long ns = System.nanoTime() - start;
        System.out.println("ns " + ((double) ns / pairs) + " " + (seen & 1));
    }
}
