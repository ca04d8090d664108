package org.sparkatron.spark;

import java.io.IOException;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import org.sparkatron.data.gpt.Blending;
import org.sparkatron.data.gpt.DatasetSampleSource;
import org.sparkatron.data.gpt.GptConfig;
import org.sparkatron.data.gpt.GptDatasetBuilder;
import org.sparkatron.data.gpt.SampleDataset;
import org.sparkatron.data.indexed.IndexedDataset;
import org.sparkatron.data.io.DataPaths;
import org.sparkatron.data.spark.PreparedDataset;
import org.sparkatron.train.SampleSource;

/**
 * Training input from Megatron indexed datasets ({@code input_format: "megatron"}), the format
 * {@code ./sparkatron prepare} writes and Megatron-LM users already have: {@code input} is either a
 * {@code prepare} output directory (its {@code manifest.json} lists the shards, blended by token count),
 * or comma-separated {@code .bin}/{@code .idx} prefixes on any Hadoop path (several are blended by their
 * token counts). Samples follow Megatron exactly: document, sample and shuffle indices by seed, the
 * training part of {@code data_split}, and data-parallel replica {@code r} reading its micro-batches of
 * each global batch (Megatron's pretraining sampler).
 *
 * <p>No data crosses Spark's shuffle: each rank that needs data (TP rank 0 of each replica) opens the
 * files itself with ranged reads, so only the indices are built per rank. Blocking (file I/O);
 * thread-confined.
 */
final class MegatronInput {
    static final String FORMAT = "megatron";

    private MegatronInput() {
    }

    /**
     * What the driver checks before launch: the files open and validate, a manifest's vocabulary fits the
     * model, and the split has a training part (too few documents are repeated over epochs, as Megatron does).
     */
    /** What {@link #validate} found: a one-line description, and whether there is a validation split. */
    record Checked(String summary, boolean validation) {
    }

    static Checked validate(TrainConfig cfg, Map<String, String> hadoopConf) {
        if (cfg.input == null) {
            throw new IllegalArgumentException("config key 'input' (a prepare output directory or Megatron .bin/.idx prefixes) is missing");
        }
        Opened o = open(cfg, hadoopConf);
        try {
            if (o.valid == null && cfg.evalIntervalGiven) {
                throw new IllegalArgumentException("eval_interval is set but data_split '" + cfg.dataSplit + "' leaves no validation "
                        + "documents in '" + cfg.input + "' (give the validation part a weight, e.g. 90,10,0)");
            }
            return new Checked(String.format(java.util.Locale.ROOT, "Megatron dataset %s: %d file(s), %d tokens, %d training samples of %d tokens%s (split %s)",
                    cfg.input, o.datasets.size(), o.tokens, o.train.length(), cfg.seqLen + 1,
                    o.valid == null ? ", no validation split" : ", " + o.valid.length() + " validation samples", cfg.dataSplit), o.valid != null);
        } finally {
            o.close();
        }
    }

    /** This replica's training samples, or throws naming the file at fault. Closing the source closes the files. */
    static SampleSource source(TrainConfig cfg, Map<String, String> hadoopConf, int replica) {
        Opened o = open(cfg, hadoopConf);
        return wrap(cfg, replica, o, new DatasetSampleSource(o.train, replica, cfg.dp, cfg.microBatch));
    }

    /**
     * This replica's validation samples (the second part of {@code data_split}, in Megatron's order, micro-batches
     * dealt to replicas as in training), or null when the split has no validation part.
     */
    static SampleSource validSource(TrainConfig cfg, Map<String, String> hadoopConf, int replica) {
        Opened o = open(cfg, hadoopConf);
        if (o.valid == null) {
            o.close();
            return null;
        }
        return wrap(cfg, replica, o, new DatasetSampleSource(o.valid, replica, cfg.dp, cfg.microBatch));
    }

    /** The samples of {@code s}, each checked against the vocabulary (a bad id is a {@link DeterministicFailure}). */
    private static SampleSource wrap(TrainConfig cfg, int replica, Opened o, DatasetSampleSource s) {
        int vocab = cfg.model().vocabSize();
        return new SampleSource() {
            @Override
            public int sampleLength() {
                return s.sampleLength();
            }

            @Override
            public boolean next(int[] out, int offset) {
                long sample = s.consumed();
                boolean more = s.next(out, offset);
                if (more) { // a bad id is in the files: every retry would read it again
                    for (int i = offset; i < offset + s.sampleLength(); i++) {
                        if (out[i] < 0 || out[i] >= vocab) {
                            throw new DeterministicFailure(true, "Megatron dataset '" + cfg.input + "': sample " + sample
                                    + " of data-parallel replica " + replica + " holds token id " + out[i] + " at position " + (i - offset)
                                    + ", outside the model's vocabulary of " + vocab);
                        }
                    }
                }
                return more;
            }

            @Override
            public long consumed() {
                return s.consumed();
            }

            @Override
            public void skip(long n) {
                s.skip(n);
            }

            @Override
            public void close() {
                o.close();
            }
        };
    }

    private record Opened(List<IndexedDataset> datasets, long tokens, SampleDataset train, SampleDataset valid) {
        void close() {
            for (IndexedDataset d : datasets) {
                try {
                    d.close();
                } catch (IOException e) {
                    // read-only files: nothing to lose
                }
            }
        }
    }

    /**
     * The dataset prefixes of {@code input} and whether their ids are known to fit the model: a
     * {@code prepare} directory's tokenizer vocabulary is checked against the model's here; bare Megatron
     * prefixes carry no vocabulary, so their ids need {@link TokenIdScan}.
     */
    record Prefixes(List<String> prefixes, boolean vocabularyChecked) {
    }

    static Prefixes prefixes(TrainConfig cfg, Map<String, String> conf) throws IOException {
        List<String> prefixes = new ArrayList<>();
        if (DataPaths.exists(DataPaths.child(cfg.input, PreparedDataset.MANIFEST), conf)) {
            PreparedDataset prepared = PreparedDataset.read(cfg.input, conf);
            if (prepared.vocabSize() > cfg.model().vocabSize()) {
                throw new IllegalArgumentException("'" + cfg.input + "' was tokenized with a vocabulary of " + prepared.vocabSize()
                        + " (" + prepared.tokenizer() + "); the model's vocab_size is " + cfg.model().vocabSize());
            }
            return new Prefixes(prepared.shardPrefixes(), true);
        }
        for (String p : cfg.input.split(",")) {
            if (!p.isBlank()) {
                prefixes.add(p.strip());
            }
        }
        return new Prefixes(prefixes, false);
    }

    /**
     * {@code cfg} with the tokenizer a {@code prepare} output's manifest names, so the trained model keeps it,
     * when the config names none and the manifest's tokenizer is built in or still readable; else unchanged.
     */
    static TrainConfig withManifestTokenizer(TrainConfig cfg, Map<String, String> conf) {
        if (cfg.tokenizer != null || cfg.input == null) {
            return cfg;
        }
        try {
            if (!DataPaths.exists(DataPaths.child(cfg.input, PreparedDataset.MANIFEST), conf)) {
                return cfg;
            }
            String t = PreparedDataset.read(cfg.input, conf).tokenizer();
            boolean usable = t.equalsIgnoreCase("gpt2") || t.equalsIgnoreCase("gpt2-legacy") || (!t.isEmpty() && DataPaths.exists(t, conf));
            return usable ? cfg.with("tokenizer", TrainConfig.JSON.getNodeFactory().textNode(t)) : cfg;
        } catch (java.io.IOException e) {
            return cfg; // validate() reports an unreadable manifest with its reason
        }
    }

    private static Opened open(TrainConfig cfg, Map<String, String> conf) {
        List<IndexedDataset> datasets = new ArrayList<>();
        try {
            List<String> prefixes = prefixes(cfg, conf).prefixes();
            long tokens = 0;
            for (String p : prefixes) {
                IndexedDataset d = IndexedDataset.open(p, conf);
                datasets.add(d);
                tokens += d.totalTokens();
            }
            double[] weights = null;
            if (datasets.size() > 1) {
                weights = new double[datasets.size()];
                for (int i = 0; i < weights.length; i++) {
                    weights[i] = datasets.get(i).totalTokens();
                }
            }
            long need = (long) cfg.steps * cfg.globalBatch;
            long validNeed = cfg.validSamplesPerReplica() * cfg.dp; // Megatron: eval_iters x evaluations x global batch
            SampleDataset[] splits = GptDatasetBuilder.build(datasets, weights, cfg.dataSplit, new Long[] {need, validNeed, null},
                    GptConfig.of(cfg.seqLen, cfg.seed), Blending.DEFAULT_SURPLUS, true); // no padded partial validation sample: the loss has no mask
            if (splits[0] == null) {
                throw new IllegalArgumentException("data_split '" + cfg.dataSplit + "' leaves no training documents in '" + cfg.input + "'");
            }
            return new Opened(datasets, tokens, splits[0], splits[1]);
        } catch (IOException e) {
            new Opened(datasets, 0, null, null).close();
            throw new IllegalArgumentException("cannot read Megatron dataset '" + cfg.input + "': " + e.getMessage(), e);
        } catch (RuntimeException e) {
            new Opened(datasets, 0, null, null).close();
            throw e;
        }
    }
}
