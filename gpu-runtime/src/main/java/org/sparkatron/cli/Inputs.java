package org.sparkatron.cli;

import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.ServiceLoader;
import org.sparkatron.train.SequenceReader;
import org.sparkatron.train.TokenFile;

/**
 * The token input of {@code train-local} and {@code score}: exactly one of {@code --tokens FILE} (ids, one
 * sequence per line), {@code --text FILE} (one document per line, tokenized) or {@code --prepared PATH} (a
 * {@code prepare} output directory or a Megatron prefix). Text and prepared input go through a
 * {@link SequenceReader} found on the classpath.
 */
final class Inputs {
    /** Files a model directory holds its tokenizer in (data-loaders' ModelTokenizer): copied along with a model. */
    static final List<String> TOKENIZER_FILES = List.of("tokenizer.json", "sparkatron_tokenizer.json");

    private Inputs() {
    }

    /** The input options as given; {@link #parse} checks them, {@link #read} reads the input. */
    record Spec(String command, String tokens, Map<String, String> textOptions, SequenceReader reader) {
        SequenceReader.Sequences read(Path modelDir, int vocabSize) throws IOException {
            if (tokens != null) {
                return new SequenceReader.Sequences(TokenFile.read(Path.of(tokens), vocabSize), null);
            }
            if (reader == null) {
                throw new Args.UsageException("--text and --prepared need the data-loaders module on the classpath (./sparkatron has it)");
            }
            return reader.read(textOptions, modelDir, vocabSize);
        }
    }

    /** Reads and checks the input options (before any work, so that {@code rejectUnknown} can follow). */
    static Spec parse(Args a) {
        String tokens = a.string("tokens", null);
        Map<String, String> textOptions = new LinkedHashMap<>();
        SequenceReader reader = ServiceLoader.load(SequenceReader.class).findFirst().orElse(null);
        for (String k : reader == null ? List.of("text", "prepared", "tokenizer") : reader.options()) {
            String v = a.string(k, null);
            if (v != null) {
                textOptions.put(k, v);
            }
        }
        boolean text = textOptions.containsKey("text") || textOptions.containsKey("prepared");
        if ((tokens != null) == text || (textOptions.containsKey("text") && textOptions.containsKey("prepared"))) {
            throw new Args.UsageException("give exactly one input: --tokens FILE (token ids), --text FILE "
                    + "(one document per line) or --prepared PATH (prepare output)");
        }
        if (tokens != null && textOptions.containsKey("tokenizer")) {
            throw new Args.UsageException("--tokenizer goes with --text, not with --tokens");
        }
        return new Spec(a.command(), tokens, textOptions, reader);
    }

    /** Saves the input's tokenizer with the model in {@code out}, else copies the one saved in {@code from}. */
    static void keepTokenizer(SequenceReader.Sequences in, Path from, Path out) throws IOException {
        if (in.tokenizer() != null) {
            SequenceReader reader = ServiceLoader.load(SequenceReader.class).findFirst().orElseThrow();
            reader.saveTokenizer(in.tokenizer(), out);
            return;
        }
        for (String f : TOKENIZER_FILES) {
            if (Files.isRegularFile(from.resolve(f))) {
                Files.copy(from.resolve(f), out.resolve(f), java.nio.file.StandardCopyOption.REPLACE_EXISTING);
            }
        }
    }
}
