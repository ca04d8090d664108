package org.sparkatron.device.cuda;

/** DropoutRng's stream key of (seed, step, site), computed as it does (its own method is private on main). */
final class DropoutRngBase {
    private static final long GOLDEN = 0x9E3779B97F4A7C15L;

    private DropoutRngBase() {
    }

    static long of(long seed, long step, int site) {
        return mix(seed ^ mix(step * GOLDEN + site));
    }

    private static long mix(long z) {
        z = (z ^ (z >>> 30)) * 0xBF58476D1CE4E5B9L;
        z = (z ^ (z >>> 27)) * 0x94D049BB133111EBL;
        return z ^ (z >>> 31);
    }
}
