package org.sparkatron.train;

/**
 * Training diverged: a non-finite loss or gradient norm that loss scaling cannot absorb. Deterministic --
 * the same weights and data diverge again -- so a caller that retries failed work (the Spark plugin's
 * stage retries) ends instead of repeating it.
 */
public final class DivergedException extends IllegalStateException {
    private static final long serialVersionUID = 1L;

    public DivergedException(String message) {
        super(message);
    }
}
