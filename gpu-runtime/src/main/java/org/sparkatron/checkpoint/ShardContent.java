package org.sparkatron.checkpoint;

import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import org.sparkatron.device.Device;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * What one rank writes into a shard file: for every parameter its TP rank owns (replicated parameters only on
 * TP rank 0; a tied embedding only on the first pipeline stage) the element segments of its local tensor, as one 1-D F32 tensor per parameter. Two ways to
 * produce the tensors: {@link #views} of the live training state (a blocking save: the caller does not train
 * until the file is written), or {@link #copy} into the rank's staging memory (an asynchronous save: training
 * goes on and changes the live state while the copy is written). Stateless.
 */
final class ShardContent {
    /** One parameter's part: {@code {global, local, length}} segments of its local tensor, and their total. */
    record Piece(String name, ParameterSet.Param param, long[][] segments, long numel) {
    }

    private ShardContent() {
    }

    /**
     * The pieces of this TP and EP rank under {@code prefix} ("model/", "optim.m/", "optim.v/"), in parameter
     * order: of the experts' parameters only ({@code experts} true), of all others (false), or of all (null).
     */
    static List<Piece> layout(Transformer model, String prefix, Boolean experts) {
        int tpRank = model.tensorParallel().rank();
        int tpSize = model.tensorParallel().size();
        int epRank = model.expertParallel().rank();
        int epSize = model.expertParallel().size();
        List<Piece> out = new ArrayList<>();
        for (ParameterSet.Param p : model.params().params()) {
            if (experts != null && experts != ShardMap.isExpert(p.name())) {
                continue; // in the other file
            }
            if (p.tp() != ParameterSet.TpRole.SPLIT && tpRank != 0) {
                continue; // replicated over the TP group: TP rank 0 writes it
            }
            if (CheckpointLayout.tiedCopy(model.config(), p, model.pipeline().layout(), model.pipeline().stage())) {
                continue; // the last stage's copy of a tied embedding: the first stage writes it
            }
            long[][] segs = ShardMap.segments(model.config(), p, tpRank, tpSize, epRank, epSize);
            long n = ShardMap.numel(ShardMap.runs(segs));
            if (n > 0) {
                out.add(new Piece(prefix + p.name(), p, segs, n));
            }
        }
        return out;
    }

    static long numel(List<Piece> pieces) {
        long n = 0;
        for (Piece p : pieces) {
            n += p.numel();
        }
        return n;
    }

    /**
     * Views of the device block {@code block} (weights, m or v) as host tensors ({@code Device.toHost}: the
     * same memory on the CPU device); a parameter whose part is not one contiguous run is gathered into a copy.
     */
    static void views(LinkedHashMap<String, Tensor> out, Device device, Tensor block, List<Piece> pieces) {
        Tensor host = device.toHost(block);
        for (Piece pc : pieces) {
            long[][] segs = pc.segments();
            ParameterSet.Param p = pc.param();
            if (segs.length == 1 && segs[0][1] == 0 && segs[0][2] == p.numel()) {
                out.put(pc.name(), host.slice(p.offset(), p.numel()));
                continue;
            }
            Tensor t = Tensor.allocateHost(DType.F32, pc.numel());
            java.nio.FloatBuffer dst = t.floats();
            int at = 0;
            for (long[] s : segs) {
                dst.put(at, host.slice(p.offset() + s[1], s[2]).floats(), 0, Math.toIntExact(s[2]));
                at += (int) s[2];
            }
            out.put(pc.name(), t);
        }
    }

    /**
     * As {@link #copy}, for a {@code block} in host memory (the CPU device's), by memory copies on the calling
     * thread (an asynchronous checkpoint's writer): no device call, so the device's own state (its count of
     * synchronisations) stays the training thread's.
     */
    static long copyOnHost(LinkedHashMap<String, Tensor> out, Tensor block, List<Piece> pieces, Tensor staging, long at) {
        try (org.sparkatron.device.HostAccess.Scope s = org.sparkatron.device.HostAccess.enter()) {
            for (Piece pc : pieces) {
                long start = at;
                for (long[] seg : pc.segments()) {
                    staging.slice(at, seg[2]).hostBuffer().duplicate()
                            .put(block.slice(pc.param().offset() + seg[1], seg[2]).hostBuffer().duplicate());
                    at += seg[2];
                }
                out.put(pc.name(), staging.slice(start, pc.numel()));
            }
        }
        return at;
    }

    /**
     * Copies the pieces of the device block {@code block} into {@code staging} (host memory of the device's
     * fastest kind) from element {@code at} on, one device-to-host copy per segment, and adds views of the copy.
     *
     * @return the element after the last one written
     */
    static long copy(LinkedHashMap<String, Tensor> out, Device device, Tensor block, List<Piece> pieces, Tensor staging,
                     long at) {
        for (Piece pc : pieces) {
            long start = at;
            for (long[] s : pc.segments()) {
                Tensor dst = staging.slice(at, s[2]);
                device.download(dst.hostBuffer(), block.slice(pc.param().offset() + s[1], s[2]));
                at += s[2];
            }
            out.put(pc.name(), staging.slice(start, pc.numel()));
        }
        return at;
    }
}
