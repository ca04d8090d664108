package org.sparkatron.data.cli;

import java.io.BufferedReader;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.io.DataPaths;
import org.sparkatron.data.spark.PreparedDataset;
import org.sparkatron.data.tokenizer.ModelTokenizer;
import org.sparkatron.data.tokenizer.TextTokenizer;
import org.sparkatron.data.tokenizer.TokenizerSpec;
import org.sparkatron.train.SequenceReader;

/**
 * Text and {@code prepare} output for {@code train-local} and {@code score}. {@code --text FILE}: one document
 * per line (as {@code prepare --format text} reads it), each tokenized with the end-of-document token
 * appended, by {@code --tokenizer} or else the tokenizer saved with the model. {@code --prepared PATH}: every
 * document of a {@code prepare} output directory (its manifest names the tokenizer) or of a Megatron
 * {@code .bin}/{@code .idx} prefix, in order. Local or Hadoop paths. Stateless.
 */
public final class TextSequenceReader implements SequenceReader {
    @Override
    public List<String> options() {
        return List.of("text", "prepared", "tokenizer");
    }

    @Override
    public Sequences read(Map<String, String> options, Path modelDir, int vocabSize) throws IOException {
        Map<String, String> conf = Map.of();
        if (options.containsKey("prepared")) {
            if (options.containsKey("tokenizer")) {
                throw new IllegalArgumentException("--tokenizer goes with --text; prepared data was tokenized already");
            }
            return prepared(options.get("prepared"), vocabSize, conf);
        }
        String tokenizer = options.get("tokenizer");
        if (tokenizer == null) {
            tokenizer = ModelTokenizer.find(modelDir.toString(), conf);
            if (tokenizer == null) {
                throw new IllegalArgumentException(modelDir + " has no saved tokenizer: give --tokenizer gpt2 or a tokenizer.json path");
            }
        }
        Path file = Path.of(options.get("text"));
        if (!Files.isRegularFile(file)) {
            throw new IllegalArgumentException("--text " + file + ": no such file");
        }
        List<int[]> out = new ArrayList<>();
        try (TextTokenizer tok = TokenizerSpec.parse(tokenizer, null, conf).create();
             BufferedReader r = Files.newBufferedReader(file, StandardCharsets.UTF_8)) {
            if (tok.vocabSize() > vocabSize) {
                throw new IllegalArgumentException("tokenizer " + tokenizer + " has " + tok.vocabSize()
                        + " ids but the model's vocabulary has " + vocabSize);
            }
            String line;
            while ((line = r.readLine()) != null) {
                if (!line.isBlank()) {
                    out.add(tok.encodeDocument(line));
                }
            }
        }
        if (out.isEmpty()) {
            throw new IllegalArgumentException(file + ": no text (the file is empty)");
        }
        return new Sequences(out, tokenizer);
    }

    private static Sequences prepared(String path, int vocabSize, Map<String, String> conf) throws IOException {
        List<String> prefixes;
        String tokenizer = null;
        if (DataPaths.exists(DataPaths.child(path, PreparedDataset.MANIFEST), conf)) {
            PreparedDataset p = PreparedDataset.read(path, conf);
            if (p.vocabSize() > vocabSize) {
                throw new IllegalArgumentException(path + " was tokenized with " + p.tokenizer() + " (" + p.vocabSize()
                        + " ids); the model's vocabulary has " + vocabSize);
            }
            prefixes = p.shardPrefixes();
            tokenizer = p.tokenizer();
        } else if (DataPaths.exists(path + ".idx", conf)) {
            prefixes = List.of(path);
        } else {
            throw new IllegalArgumentException("--prepared " + path + ": neither a prepare output directory (manifest.json) "
                    + "nor a Megatron prefix (" + path + ".idx)");
        }
        List<int[]> out = new ArrayList<>();
        for (String prefix : prefixes) {
            try (IndexedDataset d = IndexedDataset.open(prefix, conf)) {
                for (int i = 0; i < d.sequenceCount(); i++) {
                    int[] s = d.get(i);
                    for (int id : s) {
                        if (id < 0 || id >= vocabSize) {
                            throw new IllegalArgumentException(prefix + ": sequence " + i + " holds token id " + id
                                    + ", outside the model's vocabulary of " + vocabSize);
                        }
                    }
                    if (s.length > 0) {
                        out.add(s);
                    }
                }
            }
        }
        if (out.isEmpty()) {
            throw new IllegalArgumentException(path + ": no documents");
        }
        return new Sequences(out, tokenizer);
    }

    @Override
    public void saveTokenizer(String tokenizer, Path modelDir) throws IOException {
        ModelTokenizer.save(tokenizer, modelDir.toString(), Map.of());
    }
}
