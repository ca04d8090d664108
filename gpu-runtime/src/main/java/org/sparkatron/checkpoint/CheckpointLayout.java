package org.sparkatron.checkpoint;

import org.sparkatron.model.ModelLayout;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;
import org.sparkatron.parallel.PipelineLayout;

/**
 * Which files a checkpoint of a TP x CP x DP x PP layout (with EP ranks among the DP replicas) has, and which
 * world rank writes each. World rank = tp + TP x replica + TP x CP x DP x stage ({@code ParallelLayout}'s
 * order), replica = cpRank + CP x dpRank; under expert parallelism (CP 1) dpRank = epRank + EP x expertDpRank
 * (EP ranks are consecutive replicas). Immutable.
 *
 * <p>Context parallelism changes no shard: the CP ranks of a replica hold the same weights and moments
 * (Megatron reduces gradients over DP x CP), so the CP x DP ranks of a shard share its writing as DP
 * replicas alone do, and a checkpoint loads at any CP size.
 *
 * <p>Dense files ({@code model-tp00-of02.safetensors}, {@code optim-...}): TP rank t's shards of every
 * parameter (at EP 1) or of the non-expert parameters (EP > 1), written by replica {@code t mod (CP x DP)}
 * (model) and {@code (t + 1) mod (CP x DP)} (optimizer). Expert files under EP > 1
 * ({@code model-experts-ep01of02-tp00-of02.safetensors}, {@code optim-experts-...}): the experts EP rank q
 * holds, TP rank t's shards of them, written by expert-data-parallel rank {@code (t + q) mod (DP/EP)}
 * (model) and {@code (t + q + 1) mod (DP/EP)} (optimizer) of the ranks holding them, so no shard is
 * written twice and the writes spread over the replicas. Pipeline stages prefix {@code pp01of04-}.
 */
record CheckpointLayout(int tp, int cp, int dp, int pp, int ep) {
    CheckpointLayout {
        if (tp < 1 || cp < 1 || dp < 1 || pp < 1 || ep < 1 || dp % ep != 0 || (cp > 1 && ep > 1)) {
            throw new IllegalArgumentException("checkpoint layout TP " + tp + " x CP " + cp + " x DP " + dp + " x PP " + pp
                    + " with EP " + ep + ": every size must be >= 1, EP must divide DP, and CP and EP do not combine");
        }
    }

    /** No context parallelism. */
    CheckpointLayout(int tp, int dp, int pp, int ep) {
        this(tp, 1, dp, pp, ep);
    }

    /** The ranks of a TP shard and stage that hold the same dense weights: CP x DP. */
    private int replicas() {
        return cp * dp;
    }

    /** Whether the experts have files of their own (EP > 1). */
    boolean separateExperts() {
        return ep > 1;
    }

    /**
     * Whether this rank (TP rank, replica {@code cpRank + CP x dpRank}) writes the dense model file of its stage
     * and TP rank.
     */
    boolean writesModel(int tpRank, int replica) {
        return replica == tpRank % replicas();
    }

    boolean writesOptim(int tpRank, int replica) {
        return replica == (tpRank + 1) % replicas();
    }

    /** Whether this rank writes the expert model file of its stage, EP rank and TP rank (EP > 1). */
    boolean writesExpertModel(int tpRank, int replica) {
        return separateExperts() && replica / ep == (tpRank + replica % ep) % (dp / ep);
    }

    boolean writesExpertOptim(int tpRank, int replica) {
        return separateExperts() && replica / ep == (tpRank + replica % ep + 1) % (dp / ep);
    }

    /** The world rank that writes the dense model ({@code optim} false) or optimizer file of (stage, t). */
    int denseWriter(int stage, int t, boolean optim) {
        return world(stage, t, (t + (optim ? 1 : 0)) % replicas());
    }

    /** The world rank that writes the expert model or optimizer file of (stage, EP rank q, TP rank t). */
    int expertWriter(int stage, int q, int t, boolean optim) {
        return world(stage, t, q + ep * ((t + q + (optim ? 1 : 0)) % (dp / ep)));
    }

    private int world(int stage, int t, int replica) {
        return t + tp * replica + tp * replicas() * stage;
    }

    /**
     * The metadata of a save (the dropout counter {@code dropoutSteps} as it was when the save started): every tensor's global shape and which file holds which runs of it, the files'
     * sizes and CRCs from {@code all} (each world rank's row: {error, model written, bytes, crc, optim 3, step,
     * expert model 3, expert optim 3}), the data positions from {@code positions} (one per world rank).
     */
    CheckpointMetadata describe(Transformer model, long step, long dropoutSteps, long[][] all, long[] positions,
                                Map<String, String> extra) {
        CheckpointLayout lay = this;
        ModelConfig cfg = model.config();
        PipelineLayout pl = model.pipeline().layout();
        int tpSize = lay.tp();
        int epSize = lay.ep();
        Map<String, CheckpointMetadata.TensorEntry> tensors = new LinkedHashMap<>();
        for (String group : new String[] {"model/", "optim.m/", "optim.v/"}) {
            boolean optim = !group.equals("model/");
            for (int stage = 0; stage < lay.pp(); stage++) {
                for (ParameterSet.Param p : ModelLayout.stageParameters(cfg, tpSize, epSize, pl, stage)) {
                    if (tiedCopy(cfg, p, pl, stage)) {
                        continue;
                    }
                    boolean expert = ShardMap.isExpert(p.name());
                    List<CheckpointMetadata.ShardEntry> shards = new ArrayList<>();
                    int owners = p.tp() == ParameterSet.TpRole.SPLIT ? tpSize : 1;
                    for (int q = 0; q < (expert ? epSize : 1); q++) {
                        for (int t = 0; t < owners; t++) {
                            List<long[]> runs = ShardMap.runs(ShardMap.segments(cfg, p, t, tpSize, q, epSize));
                            if (runs.isEmpty()) {
                                continue;
                            }
                            String file = expert && lay.separateExperts()
                                    ? (optim ? lay.expertOptimFile(stage, q, t) : lay.expertModelFile(stage, q, t))
                                    : (optim ? lay.optimFile(stage, t) : lay.modelFile(stage, t));
                            shards.add(new CheckpointMetadata.ShardEntry(file, group + p.name(), runs));
                        }
                    }
                    tensors.put(group + p.name(), new CheckpointMetadata.TensorEntry(ShardMap.globalShape(cfg, p, tpSize, epSize),
                            shards));
                }
            }
        }
        Map<String, CheckpointMetadata.FileEntry> files = new LinkedHashMap<>();
        for (int stage = 0; stage < lay.pp(); stage++) {
            for (int t = 0; t < tpSize; t++) {
                long[] m = all[lay.denseWriter(stage, t, false)];
                long[] o = all[lay.denseWriter(stage, t, true)];
                files.put(lay.modelFile(stage, t), new CheckpointMetadata.FileEntry(m[2], ShardFiles.hex(m[3])));
                files.put(lay.optimFile(stage, t), new CheckpointMetadata.FileEntry(o[5], ShardFiles.hex(o[6])));
                for (int q = 0; q < epSize && lay.separateExperts(); q++) {
                    long[] em = all[lay.expertWriter(stage, q, t, false)];
                    long[] eo = all[lay.expertWriter(stage, q, t, true)];
                    files.put(lay.expertModelFile(stage, q, t), new CheckpointMetadata.FileEntry(em[9], ShardFiles.hex(em[10])));
                    files.put(lay.expertOptimFile(stage, q, t), new CheckpointMetadata.FileEntry(eo[12], ShardFiles.hex(eo[13])));
                }
            }
        }
        long[] dataPositions = new long[lay.dp()];
        long total = 0;
        for (int d = 0; d < lay.dp(); d++) {
            dataPositions[d] = positions[d * tpSize * cp]; // TP and CP rank 0 of the first stage of replica d
            total += dataPositions[d];
        }
        return new CheckpointMetadata(step, total, dropoutSteps, dataPositions, tpSize, lay.dp(), lay.pp(), epSize, cfg,
                extra == null ? Map.of() : extra, tensors, files);
    }

    /** Whether {@code p}, held by pipeline stage {@code stage}, is the tied embedding's copy on a later stage. */
    static boolean tiedCopy(ModelConfig cfg, ParameterSet.Param p, PipelineLayout pl, int stage) {
        return cfg.tiedEmbeddings() && p.name().equals("embed") && !pl.isFirst(stage, 0);
    }

    String modelFile(int stage, int tpRank) {
        return "model-" + stagePrefix(stage) + tpName(tpRank);
    }

    String optimFile(int stage, int tpRank) {
        return "optim-" + stagePrefix(stage) + tpName(tpRank);
    }

    String expertModelFile(int stage, int epRank, int tpRank) {
        return "model-experts-" + stagePrefix(stage) + epName(epRank) + tpName(tpRank);
    }

    String expertOptimFile(int stage, int epRank, int tpRank) {
        return "optim-experts-" + stagePrefix(stage) + epName(epRank) + tpName(tpRank);
    }

    private String stagePrefix(int stage) {
        return pp > 1 ? String.format(Locale.ROOT, "pp%02dof%02d-", stage, pp) : "";
    }

    private String epName(int epRank) {
        return String.format(Locale.ROOT, "ep%02dof%02d-", epRank, ep);
    }

    private String tpName(int tpRank) {
        return String.format(Locale.ROOT, "tp%02d-of%02d.safetensors", tpRank, tp);
    }
}
