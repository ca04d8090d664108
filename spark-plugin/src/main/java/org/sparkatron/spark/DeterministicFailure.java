package org.sparkatron.spark;

/**
 * A failure that a retry would repeat, because the same data, weights and config give the same error: a
 * non-finite loss, a token id outside the vocabulary in a sample. A rank throws it instead of an ordinary
 * exception; the driver's {@link FailFast} recognises its class in the task's failure and ends the job
 * at once with its message, instead of Spark rerunning the barrier stage (and every step before the
 * error) up to {@code spark.stage.maxConsecutiveAttempts} times. On the driver it is the job's outcome:
 * {@link #badInput} says whether the user's input is at fault (the CLI exits 2) or training failed (1).
 */
public final class DeterministicFailure extends RuntimeException {
    private static final long serialVersionUID = 1L;
    private final boolean badInput;

    DeterministicFailure(boolean badInput, String message) {
        super(message);
        this.badInput = badInput;
    }

    /** True when the input (data, config, model files) is at fault; false when training itself failed. */
    public boolean badInput() {
        return badInput;
    }

    /** The deterministic failure in {@code t}'s cause chain, or null. */
    static DeterministicFailure in(Throwable t) {
        for (int depth = 0; t != null && depth < 20; t = t.getCause(), depth++) {
            if (t instanceof DeterministicFailure d) {
                return d;
            }
        }
        return null;
    }
}
