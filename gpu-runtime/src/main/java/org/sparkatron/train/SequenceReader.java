package org.sparkatron.train;

import java.io.IOException;
import java.nio.file.Path;
import java.util.List;
import java.util.Map;

/**
 * Reads token sequences for the single-process commands ({@code train-local}, {@code score}) from inputs
 * that need a tokenizer or a dataset reader, which live above this module: text files and {@code prepare}
 * output. Found with {@link java.util.ServiceLoader} (data-loaders provides one), so this module keeps no
 * dependency on them. Implementations are stateless; calls block on file I/O.
 */
public interface SequenceReader {
    /** What was read, and the tokenizer that goes with it (a name or a tokenizer.json path; null if unknown). */
    record Sequences(List<int[]> sequences, String tokenizer) {
    }

    /** The command-line options this reader takes ({@code --text}, {@code --prepared}, {@code --tokenizer}). */
    List<String> options();

    /**
     * Reads the input named by {@code options} (only this reader's keys, as given on the command line), checking
     * ids against {@code vocabSize}; {@code modelDir} may hold a saved tokenizer to use when none is given.
     * Throws IllegalArgumentException for a bad input, naming it.
     */
    Sequences read(Map<String, String> options, Path modelDir, int vocabSize) throws IOException;

    /** Saves {@code tokenizer} with the model in {@code modelDir}. */
    void saveTokenizer(String tokenizer, Path modelDir) throws IOException;
}
