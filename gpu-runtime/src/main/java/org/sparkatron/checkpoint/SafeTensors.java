package org.sparkatron.checkpoint;

import java.io.IOException;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.sparkatron.tensor.Tensor;

/**
 * Entry points for safetensors files: {@link #open(Path)} to read (validated, memory-mapped, zero-copy) and
 * {@link #write(Path, LinkedHashMap, Map)} to write atomically. See {@link SafeTensorsFile} and
 * {@link SafeTensorsWriter} for threading, blocking and failure behaviour.
 */
public final class SafeTensors {
    private SafeTensors() {
    }

    /** Same as {@link SafeTensorsFile#open(Path)}. */
    public static SafeTensorsFile open(Path path) throws IOException {
        return SafeTensorsFile.open(path);
    }

    /** Same as {@link SafeTensorsWriter#write(Path, LinkedHashMap, Map)}. */
    public static void write(Path path, LinkedHashMap<String, Tensor> tensors, Map<String, String> metadata)
            throws IOException {
        SafeTensorsWriter.write(path, tensors, metadata);
    }
}
