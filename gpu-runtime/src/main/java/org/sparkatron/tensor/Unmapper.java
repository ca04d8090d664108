package org.sparkatron.tensor;

import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.nio.ByteBuffer;
import java.nio.MappedByteBuffer;

/**
 * Frees a file mapping now instead of when the garbage collector finds it (JDK 17: {@code sun.misc.Unsafe.invokeCleaner},
 * from the {@code jdk.unsupported} module; without it the mapping is left to the collector). Why: a mapping keeps the
 * file's pages in memory and, once the file is deleted (an old checkpoint pruned), its disk space too. The buffer
 * and every view of it must not be used afterwards. Used for checkpoint reads and shared-memory segments. Stateless,
 * thread-safe.
 */
public final class Unmapper {
    private static final Object UNSAFE;
    private static final Method INVOKE_CLEANER;

    static {
        Object u = null;
        Method m = null;
        try {
            Class<?> c = Class.forName("sun.misc.Unsafe");
            Field f = c.getDeclaredField("theUnsafe");
            f.setAccessible(true);
            u = f.get(null);
            m = c.getMethod("invokeCleaner", ByteBuffer.class);
        } catch (ReflectiveOperationException | RuntimeException e) {
            // left to the garbage collector
        }
        UNSAFE = u;
        INVOKE_CLEANER = m;
    }

    private Unmapper() {
    }

    public static void unmap(MappedByteBuffer b) {
        if (INVOKE_CLEANER == null) {
            return;
        }
        try {
            INVOKE_CLEANER.invoke(UNSAFE, b);
        } catch (ReflectiveOperationException | RuntimeException e) {
            // left to the garbage collector
        }
    }
}
