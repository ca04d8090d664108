package org.sparkatron.checkpoint;

import java.io.IOException;

/**
 * A safetensors file that breaks the format: bad header length, malformed or inconsistent JSON header,
 * unknown dtype, data offsets that disagree with the shape or the file size. The message names the file,
 * the tensor (when one is at fault) and the numbers involved.
 */
public final class SafeTensorsFormatException extends IOException {
    private static final long serialVersionUID = 1L;

    public SafeTensorsFormatException(String message) {
        super(message);
    }

    public SafeTensorsFormatException(String message, Throwable cause) {
        super(message, cause);
    }
}
