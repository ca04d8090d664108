package org.sparkatron.checkpoint;

import java.io.IOException;

/**
 * A checkpoint that cannot be used: incomplete (never committed), truncated, corrupted (checksum),
 * malformed metadata, or made for another model. The message names the checkpoint, the file and the
 * problem. {@link #fallbackAllowed()} tells automatic resume whether an older checkpoint may be tried
 * instead (damage: yes; a mismatched model: no, that is a wrong directory or a wrong config).
 */
public class CheckpointException extends IOException {
    private static final long serialVersionUID = 1L;
    private final boolean fallbackAllowed;

    public CheckpointException(String message, boolean fallbackAllowed) {
        super(message);
        this.fallbackAllowed = fallbackAllowed;
    }

    public CheckpointException(String message, Throwable cause, boolean fallbackAllowed) {
        super(message, cause);
        this.fallbackAllowed = fallbackAllowed;
    }

    public boolean fallbackAllowed() {
        return fallbackAllowed;
    }
}
