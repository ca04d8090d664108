package org.sparkatron.data.gpt;

import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;

/**
 * Megatron's train / validation / test split by ratio (blended_megatron_dataset_config.py
 * {@code parse_and_normalize_split}, {@code convert_split_vector_to_split_matrix}, and the builder's
 * {@code round(bookend * num_elements)}): a string such as {@code "969,30,1"} becomes three contiguous
 * document ranges. Stateless.
 */
public final class Splits {
    public static final int TRAIN = 0;
    public static final int VALID = 1;
    public static final int TEST = 2;

    private Splits() {
    }

    /** Parses and normalizes a split string; missing trailing parts are 0. */
    public static double[] parse(String split) {
        List<Double> parts = new ArrayList<>();
        Matcher m = Pattern.compile("[.0-9]+").matcher(split);
        while (m.find()) {
            parts.add(Double.parseDouble(m.group()));
        }
        if (parts.isEmpty() || parts.size() > 3) {
            throw new IllegalArgumentException("split \"" + split + "\" must have 1 to 3 non-negative numbers, e.g. 969,30,1");
        }
        double[] v = new double[3];
        for (int i = 0; i < parts.size(); i++) {
            v[i] = parts.get(i);
        }
        return Blending.normalize(v);
    }

    /** Book-ends {@code [begin, end)} as fractions per split, or null for an empty split. */
    public static double[][] matrix(double[] normalized) {
        double[] expansion = new double[normalized.length + 1];
        for (int i = 0; i < normalized.length; i++) {
            expansion[i + 1] = expansion[i] + normalized[i];
        }
        double[][] out = new double[normalized.length][];
        for (int i = 0; i < normalized.length; i++) {
            out[i] = expansion[i] == expansion[i + 1] ? null : new double[] {expansion[i], expansion[i + 1]};
        }
        return out;
    }

    /** The document ids of one split of {@code numDocuments}, or null if the split is empty. */
    public static int[] documents(double[][] matrix, int split, int numDocuments) {
        double[] b = matrix[split];
        if (b == null) {
            return null;
        }
        // Python's round() rounds half to even, as Math.rint does.
        int beg = (int) Math.rint(b[0] * (double) numDocuments);
        int end = (int) Math.rint(b[1] * (double) numDocuments);
        int[] docs = new int[Math.max(0, end - beg)];
        for (int i = 0; i < docs.length; i++) {
            docs[i] = beg + i;
        }
        return docs;
    }
}
