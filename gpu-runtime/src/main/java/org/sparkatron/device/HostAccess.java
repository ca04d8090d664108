package org.sparkatron.device;

/**
 * Marks the code that may touch device memory from the host: a device's own kernels and copies, and
 * communicator operations (which are device work, ordered with the kernels). The strict CPU device
 * ({@link org.sparkatron.device.cpu.CpuDevice#strict()}) refuses every other host access to its memory,
 * so model, parallel, optimizer and training code that would read or write device memory directly, and
 * so break on a GPU, fails in CI. On other devices the marks cost one thread-local increment and check
 * nothing.
 *
 * <p>Per thread: a mark covers the calling thread only. Usage: {@code try (var a = HostAccess.enter()) {...}}.
 */
public final class HostAccess {
    private static final ThreadLocal<int[]> DEPTH = ThreadLocal.withInitial(() -> new int[1]);
    private static final Scope SCOPE = new Scope();

    private HostAccess() {
    }

    /** Opens an access scope on this thread; close it (try-with-resources) when the device work is done. */
    public static Scope enter() {
        DEPTH.get()[0]++;
        return SCOPE;
    }

    /** Whether this thread is inside device work. */
    public static boolean allowed() {
        return DEPTH.get()[0] > 0;
    }

    /** The closing half of {@link #enter()}; one shared instance, no allocation per scope. */
    public static final class Scope implements AutoCloseable {
        private Scope() {
        }

        @Override
        public void close() {
            DEPTH.get()[0]--;
        }
    }
}
