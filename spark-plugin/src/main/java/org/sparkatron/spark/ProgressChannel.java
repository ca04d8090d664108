package org.sparkatron.spark;

/**
 * How rank 0's progress lines reach the driver: Spark's own RPC through the Sparkatron plugin
 * ({@link SparkatronPlugin}, where {@code spark.plugins} installs it) or the zero-configuration socket
 * ({@link ProgressReporter} to the driver's {@link ProgressServer}). Best effort: a lost line never fails
 * training. Used by the rank's training thread only.
 */
interface ProgressChannel extends AutoCloseable {
    /** Sends one JSON line (never blocks training for long). */
    void report(String jsonLine);

    /** Returns when every line sent so far has been handled by the driver (where the channel can tell). */
    default void flush() {
    }

    @Override
    void close();
}
