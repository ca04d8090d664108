package org.sparkatron.checkpoint;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.io.IOException;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import org.sparkatron.comm.ParallelLayout;
import org.sparkatron.comm.ProcessGroups;
import org.sparkatron.device.TestDevices;
import org.sparkatron.precision.Precision;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.TensorParallel;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/** Tiny models, data and helpers shared by the checkpoint tests. */
final class Fixtures {
    static final int SEQ = 8;

    private Fixtures() {
    }

    /**
     * GPT-2 (tied, biases, learned positions) and Llama (GQA 8/4 heads, untied, SwiGLU), vocabulary padding
     * multiple 8: vocab 67 pads to 72 at TP 1, 80 at TP 2, 96 at TP 4, so resharding must drop and re-add
     * padding rows, and the last TP = 4 rank of the Llama model owns no real token.
     */
    static ModelConfig config(String family) throws IOException {
        return config(family, family.equals("gpt2") ? 67 : 61, 32);
    }

    static ModelConfig config(String family, int vocab, int hidden) throws IOException {
        return config(family, vocab, hidden, 2);
    }

    static ModelConfig config(String family, int vocab, int hidden, int layers) throws IOException {
        String json = family.equals("gpt2")
                ? "{\"model_type\":\"gpt2\",\"n_layer\":" + layers + ",\"n_embd\":" + hidden + ",\"n_head\":4,\"n_positions\":16,\"vocab_size\":"
                        + vocab + ",\"sparkatron_vocab_multiple\":8}"
                : "{\"model_type\":\"llama\",\"num_hidden_layers\":" + layers + ",\"hidden_size\":" + hidden + ",\"intermediate_size\":48,"
                        + "\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":" + vocab
                        + ",\"max_position_embeddings\":16,\"tie_word_embeddings\":false,\"sparkatron_vocab_multiple\":8}";
        return ModelConfig.fromJson(new ObjectMapper().readTree(json));
    }

    /** Deterministic random token documents. */
    static PackedSamples data(ModelConfig cfg, long seed) {
        SplittableRandom r = new SplittableRandom(seed);
        List<int[]> docs = new ArrayList<>();
        for (int d = 0; d < 40; d++) {
            int[] doc = new int[5 + r.nextInt(20)];
            for (int i = 0; i < doc.length; i++) {
                doc[i] = r.nextInt(cfg.vocabSize());
            }
            docs.add(doc);
        }
        return PackedSamples.packed(docs, SEQ, seed);
    }

    static Trainer.Options options(int batch) {
        return Trainer.Options.defaults(batch, new LrSchedule(1e-2, 1e-3, 2, 20));
    }

    /** This rank's TP context and DP coordinate for a TP x DP world. */
    record Place(ProcessGroups groups, TensorParallel tp, int dpRank) implements AutoCloseable {
        @Override
        public void close() {
            groups.close();
        }
    }

    static Place place(int tp, int dp, org.sparkatron.comm.Communicator world) {
        ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * dp, tp, 1, 1, 1, 1), world);
        return new Place(pg, new TensorParallel(pg.tp(), false), pg.coords()[3]);
    }

    /** This rank's TP x DP x PP place (world rank = tp + TP dp + TP DP pp). */
    static Place place(int tp, int dp, int pp, org.sparkatron.comm.Communicator world) {
        ProcessGroups pg = ProcessGroups.create(ParallelLayout.forWorld(tp * dp * pp, tp, 1, 1, pp, 1), world);
        return new Place(pg, new TensorParallel(pg.tp(), false), pg.coords()[3]);
    }

    /** A model initialised with seed 5 for a TP x PP place. */
    static Transformer model(ModelConfig cfg, Place place) {
        return model(cfg, place, Precision.FP32, null);
    }

    /** The same in {@code precision}, with the FP8 recipe {@code fp8} under precision fp8 (null: Megatron's defaults). */
    static Transformer model(ModelConfig cfg, Place place, Precision precision, org.sparkatron.precision.Fp8Recipe fp8) {
        org.sparkatron.parallel.PipelineParallel stage = new org.sparkatron.parallel.PipelineParallel(place.groups().pp(),
                org.sparkatron.parallel.PipelineLayout.of(cfg.layers(), place.groups().layout().pp(), 1, -1, -1),
                place.groups().embedding());
        Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), place.tp(), precision, stage, null, null, fp8));
        m.initialize(5);
        return m;
    }

    static Transformer model(ModelConfig cfg, TensorParallel tp) {
        Transformer m = new Transformer(cfg, new RankContext(TestDevices.create(), tp, Precision.FP32));
        m.initialize(5);
        return m;
    }

    /**
     * Every tensor of a checkpoint assembled to its global (TP = 1) shape from the files, straight from the
     * metadata's runs: an independent reading of the format, not the loader's.
     */
    static Map<String, float[]> globalTensors(Path dir) throws IOException {
        CheckpointStorage fs = new LocalStorage();
        CheckpointMetadata meta = new DistributedCheckpoint(fs, dir.getParent().toString(), 1).metadata(dir.toString());
        Map<String, float[]> out = new LinkedHashMap<>();
        for (Map.Entry<String, CheckpointMetadata.TensorEntry> e : meta.tensors().entrySet()) {
            long n = 1;
            for (int d : e.getValue().shape()) {
                n *= d;
            }
            float[] g = new float[Math.toIntExact(n)];
            java.util.Arrays.fill(g, Float.NaN); // elements no shard covers stay NaN and fail comparisons
            for (CheckpointMetadata.ShardEntry s : e.getValue().shards()) {
                try (SafeTensorsFile st = SafeTensors.open(dir.resolve(s.file()))) {
                    float[] shard = st.readF32(s.key());
                    for (long[] p : ShardMap.expand(s.runs())) {
                        System.arraycopy(shard, (int) p[1], g, (int) p[0], (int) p[2]);
                    }
                }
            }
            out.put(e.getKey(), g);
        }
        return out;
    }
}
