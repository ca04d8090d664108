package org.sparkatron.model;

import java.util.ArrayList;
import java.util.HashMap;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.device.Device;
import org.sparkatron.device.Kernels;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Under BF16/FP16 (and FP8) the model keeps its compute weights in real 16-bit elements (2 bytes each, as
 * Megatron keeps its bf16 parameters), but the kernels read fp32 weights. This is the bridge: one fp32 buffer
 * the size of the model's largest <em>unit</em> (a transformer layer, the embedding, the position table, the
 * final norm, the output layer), into which a unit's 16-bit weights are widened, exactly, just before a kernel
 * reads them ({@link #use}): before the unit's forward and again before its backward. The layers hold views of
 * this buffer ({@link #views}); only the unit last widened is valid in it.
 *
 * <p>The values the kernels read are bit for bit those of a 16-bit copy stored in fp32 elements (a widened
 * bf16 or fp16 value is exact), and every view keeps its weight's alignment modulo 64 elements in the weight
 * block, so results are those of keeping the whole fp32 copy. The cost is one memory pass over a unit's
 * weights per use, and the buffer ({@link #scratchElements}, counted as workspace by {@link MemoryEstimate}).
 *
 * <p>A unit's parameters may lie in several runs of the block (a mixture-of-experts layer's experts sit in
 * the expert region at its end); each run is widened to its own place in the buffer.
 *
 * <p>Stream order: {@link #use} issues one widening kernel per run on the rank's stream, so a later kernel
 * reading the views sees the unit, and a kernel of the previous unit still queued reads its values before they
 * are replaced. One rank's thread; not thread-safe.
 */
final class WeightStaging {
    /** Views start at a multiple of this many elements in the buffer, as in the block modulo it. */
    static final long ALIGN = 64;

    /** One run of a unit's weights: {@code length} elements at {@code blockStart}, widened to {@code at} in the buffer. */
    record Run(long blockStart, long length, long at) {
    }

    /** Where everything goes: each unit's runs and the buffer's size. */
    record Plan(Map<String, List<Run>> units, Map<String, String> unitOfParam, long elements) {
    }

    private final Device device;
    private final Kernels k;
    private final Plan plan;
    private final Tensor scratch;
    private final Map<String, Tensor> views = new HashMap<>();
    private Tensor source;
    private String resident;

    /** The buffer for {@code params} (a rank's layout, with its offsets) on {@code device}. */
    WeightStaging(Device device, Kernels kernels, List<ParameterSet.Param> params) {
        this.device = device;
        this.k = kernels;
        this.plan = plan(params);
        this.scratch = device.zeros(MemoryKind.WORKSPACE, DType.F32, Math.max(1, plan.elements()));
        for (ParameterSet.Param p : params) {
            String unit = plan.unitOfParam().get(p.name());
            long at = -1;
            for (Run r : plan.units().get(unit)) {
                if (p.offset() >= r.blockStart() && p.offset() + p.numel() <= r.blockStart() + r.length()) {
                    at = r.at() + (p.offset() - r.blockStart());
                }
            }
            if (at < 0 && p.numel() > 0) {
                throw new IllegalStateException(p.name() + " lies in no run of its unit " + unit);
            }
            views.put(p.name(), scratch.slice(Math.max(0, at), p.numel()).view(p.shape()));
        }
    }

    /** The unit a parameter belongs to: {@code layers.{i}}, {@code norm_f}, or the parameter's own name. */
    static String unitOf(String param) {
        if (param.startsWith("layers.")) {
            return param.substring(0, param.indexOf('.', 7));
        }
        if (param.startsWith("norm_f.")) {
            return "norm_f";
        }
        return param;
    }

    /**
     * Groups {@code params} into units and each unit's parameters into runs (maximal stretches of the block, in
     * offset order, holding no other unit's parameter), each started at a multiple of {@link #ALIGN}.
     */
    static Plan plan(List<ParameterSet.Param> params) {
        List<ParameterSet.Param> byOffset = new ArrayList<>();
        for (ParameterSet.Param p : params) {
            if (p.numel() > 0) {
                byOffset.add(p);
            }
        }
        byOffset.sort((a, b) -> Long.compare(a.offset(), b.offset()));
        Map<String, String> unitOfParam = new LinkedHashMap<>();
        Map<String, List<Run>> units = new LinkedHashMap<>();
        Map<String, Long> used = new HashMap<>();
        for (ParameterSet.Param p : params) {
            String u = unitOf(p.name());
            unitOfParam.put(p.name(), u);
            units.computeIfAbsent(u, x -> new ArrayList<>());
        }
        long most = 0;
        for (int i = 0; i < byOffset.size(); ) {
            String u = unitOf(byOffset.get(i).name());
            long start = byOffset.get(i).offset() / ALIGN * ALIGN;
            long end = byOffset.get(i).offset() + byOffset.get(i).numel();
            int j = i + 1;
            while (j < byOffset.size() && unitOf(byOffset.get(j).name()).equals(u)) {
                end = byOffset.get(j).offset() + byOffset.get(j).numel();
                j++;
            }
            long at = used.getOrDefault(u, 0L);
            units.get(u).add(new Run(start, end - start, at));
            long next = (at + end - start + ALIGN - 1) / ALIGN * ALIGN;
            used.put(u, next);
            most = Math.max(most, next);
            i = j;
        }
        return new Plan(units, unitOfParam, most);
    }

    /** Elements of the fp32 buffer for {@code params} (for {@link MemoryEstimate}). */
    static long scratchElements(List<ParameterSet.Param> params) {
        return Math.max(1, plan(params).elements());
    }

    /** Each parameter's view in the buffer, by name: what the layers read (valid while its unit is the one widened). */
    Map<String, Tensor> views() {
        return views;
    }

    /** Bytes of the fp32 buffer. */
    long bytes() {
        return scratch.byteSize();
    }

    /**
     * The 16-bit block (the rank's layout, BF16 or F16 elements) the units come from; forgets what the buffer holds
     * (call whenever the block's values may have changed: the start of every pass).
     */
    void invalidate(Tensor block) {
        if (block.dtype() != DType.BF16 && block.dtype() != DType.F16) {
            throw new IllegalArgumentException("the staged weights come from a 16-bit block, not " + block);
        }
        this.source = block;
        this.resident = null;
    }

    /** Widens unit {@code unit}'s weights into the buffer unless they are already there (stream-ordered kernels). */
    void use(String unit) {
        if (unit.equals(resident)) {
            return;
        }
        List<Run> runs = plan.units().get(unit);
        if (runs == null) {
            throw new IllegalArgumentException("no weights of unit '" + unit + "' on this rank");
        }
        if (source == null) {
            throw new IllegalStateException("no 16-bit weights to widen yet (the pass did not start)");
        }
        for (Run r : runs) {
            k.widen(scratch.slice(r.at(), r.length()), source.slice(r.blockStart(), r.length()), r.length());
        }
        resident = unit;
    }

    /** Returns the buffer to the device. */
    void close() {
        device.release(scratch);
    }
}
