package org.sparkatron.train;

import java.io.BufferedReader;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;

/**
 * A plain-text token file: one sequence per line, token ids as decimal integers separated by single
 * spaces. Blank lines are skipped. Anything else (a non-number, a negative id, an id outside the
 * vocabulary, doubled spaces) is refused with the file, line and column.
 */
public final class TokenFile {
    private TokenFile() {
    }

    /** Reads every sequence, checking ids against {@code vocabSize}. */
    public static List<int[]> read(Path path, int vocabSize) throws IOException {
        if (Files.isDirectory(path)) {
            throw new IllegalArgumentException(path + " is a directory, not a token file");
        }
        List<int[]> out = new ArrayList<>();
        int lineNo = 0;
        try (BufferedReader r = Files.newBufferedReader(path, StandardCharsets.UTF_8)) {
            String line;
            while ((line = r.readLine()) != null) {
                lineNo++;
                if (line.isBlank()) {
                    continue;
                }
                out.add(parseLine(path, lineNo, line, vocabSize));
            }
        } catch (java.nio.charset.CharacterCodingException e) {
            throw new IllegalArgumentException(path + " is not UTF-8 text (a token file is lines of token ids): line " + (lineNo + 1)
                    + " is not; a binary Megatron .bin is read by ./sparkatron train with input_format megatron", e);
        } catch (java.nio.file.FileSystemException e) {
            throw e; // names the file already; the CLI reports it as the user's (missing, denied)
        } catch (IOException e) {
            throw new IOException(path + ": cannot read the token file: " + e, e);
        }
        if (out.isEmpty()) {
            throw new IllegalArgumentException(path + ": no token sequences (the file is empty)");
        }
        return out;
    }

    static int[] parseLine(Path path, int lineNo, String line, int vocabSize) {
        String[] parts = line.strip().split(" ", -1);
        int[] ids = new int[parts.length];
        int col = 1;
        for (int i = 0; i < parts.length; i++) {
            String p = parts[i];
            int id;
            try {
                if (p.isEmpty() || p.charAt(0) == '+') {
                    throw new NumberFormatException();
                }
                id = Integer.parseInt(p);
            } catch (NumberFormatException e) {
                throw new IllegalArgumentException(path + ":" + lineNo + ":" + col + ": '" + p
                        + "' is not a token id (expected non-negative integers separated by single spaces)");
            }
            if (id < 0 || id >= vocabSize) {
                throw new IllegalArgumentException(path + ":" + lineNo + ":" + col + ": token id " + id
                        + " is outside the vocabulary of " + vocabSize);
            }
            ids[i] = id;
            col += p.length() + 1;
        }
        return ids;
    }
}
