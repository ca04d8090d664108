package org.sparkatron.checkpoint;

import java.io.IOException;
import java.nio.channels.FileChannel;
import java.nio.file.StandardOpenOption;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import org.sparkatron.device.Device;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * Reads one rank's part of a checkpoint saved under any TP and EP layout into a model of this rank's layout: for
 * every local parameter it intersects the rank's global element segments with the saved shards' runs
 * (from the metadata alone), then copies just those slices out of the memory-mapped shard files. Vocabulary
 * padding rows that map to no global element are zeroed. Built per load; one rank's thread.
 */
final class ShardReader {
    /** Copy {@code len} floats from shard tensor {@code key} at {@code src} to block {@code block} at {@code dst}. */
    private record Op(int block, String key, long src, long dst, long len) {
    }

    /** A saved piece: global offset, offset in its shard tensor, length, file and key. */
    private record Piece(long global, long local, long len, String file, String key) {
    }

    private final String dir;
    private final CheckpointMetadata meta;
    private final Map<String, List<Op>> opsByFile = new LinkedHashMap<>();
    private final List<long[]> zeros = new ArrayList<>(); // {block, offset, length}
    private final Map<String, Long> keyNumel = new LinkedHashMap<>();

    /**
     * Plans the reads for {@code model} (and the optimizer moments when {@code withOptimizer}).
     *
     * @throws CheckpointException when the metadata does not cover a needed tensor or element
     */
    ShardReader(String dir, CheckpointMetadata meta, Transformer model, boolean withOptimizer) throws CheckpointException {
        this.dir = dir;
        this.meta = meta;
        int tpRank = model.tensorParallel().rank();
        int tpSize = model.tensorParallel().size();
        int epRank = model.expertParallel().rank();
        int epSize = model.expertParallel().size();
        String[] groups = withOptimizer ? new String[] {"model/", "optim.m/", "optim.v/"} : new String[] {"model/"};
        for (int b = 0; b < groups.length; b++) {
            for (ParameterSet.Param p : model.params().params()) {
                plan(b, groups[b] + p.name(), model, p, tpRank, tpSize, epRank, epSize);
            }
        }
    }

    private void plan(int block, String name, Transformer model, ParameterSet.Param p, int tpRank, int tpSize, int epRank,
                      int epSize) throws CheckpointException {
        CheckpointMetadata.TensorEntry e = meta.tensors().get(name);
        if (e == null) {
            throw new CheckpointException(dir + ": the metadata has no tensor '" + name + "'", true);
        }
        int[] shape = ShardMap.globalShape(model.config(), p, tpSize, epSize);
        if (!Arrays.equals(shape, e.shape())) {
            throw new CheckpointException(dir + ": tensor '" + name + "' has global shape " + Arrays.toString(e.shape())
                    + ", the model needs " + Arrays.toString(shape), false);
        }
        List<Piece> pieces = new ArrayList<>();
        for (CheckpointMetadata.ShardEntry s : e.shards()) {
            if (!meta.files().containsKey(s.file())) {
                throw new CheckpointException(dir + ": tensor '" + name + "' is in file " + s.file()
                        + ", which the metadata's file list lacks", true);
            }
            keyNumel.put(s.file() + "\u0000" + s.key(), ShardMap.numel(s.runs()));
            for (long[] x : ShardMap.expand(s.runs())) {
                pieces.add(new Piece(x[0], x[1], x[2], s.file(), s.key()));
            }
        }
        pieces.sort(Comparator.comparingLong(Piece::global));
        long[] starts = new long[pieces.size()];
        for (int i = 0; i < starts.length; i++) {
            starts[i] = pieces.get(i).global();
        }
        long[][] segs = ShardMap.segments(model.config(), p, tpRank, tpSize, epRank, epSize);
        long covered = 0;
        for (long[] s : segs) {
            covered += s[2];
        }
        if (covered < p.numel()) {
            zeros.add(new long[] {block, p.offset(), p.numel()});
        }
        for (long[] s : segs) {
            long g = s[0];
            long end = s[0] + s[2];
            while (g < end) {
                int i = Arrays.binarySearch(starts, g);
                i = i >= 0 ? i : -i - 2;
                Piece pc = i >= 0 ? pieces.get(i) : null;
                if (pc == null || g >= pc.global() + pc.len()) {
                    throw new CheckpointException(dir + ": tensor '" + name + "': global element " + g
                            + " is in no saved shard", true);
                }
                long n = Math.min(end, pc.global() + pc.len()) - g;
                opsByFile.computeIfAbsent(pc.file(), k -> new ArrayList<>())
                        .add(new Op(block, pc.key(), pc.local() + (g - pc.global()), p.offset() + s[1] + (g - s[0]), n));
                g += n;
            }
        }
    }

    /** The files this rank needs. */
    List<String> files() {
        return new ArrayList<>(opsByFile.keySet());
    }

    /**
     * Reads the planned slices from the (local) files into blocks in the model's parameter layout: its weights and,
     * when planned with the optimizer, the moments (null: not read). Each file is read once, its CRC32C checked
     * as it is read ({@link CheckedFileReader}); the slices go straight into the blocks (on the CPU device: the
     * blocks themselves).
     *
     * @throws CheckpointException naming the file when it is damaged (then the blocks hold unspecified values:
     *     the caller must not use them; they are fully rewritten by the next successful read)
     */
    void read(Map<String, ShardFiles.Local> local, Device device, Tensor weights, Tensor m, Tensor v) throws IOException {
        Tensor[] onDevice = {weights, m, v};
        Tensor[] blocks = new Tensor[onDevice.length]; // host views (the blocks themselves on the CPU device)
        for (int b = 0; b < blocks.length; b++) {
            blocks[b] = onDevice[b] == null ? null : device.toHost(onDevice[b]);
        }
        for (long[] z : zeros) {
            float[] zero = new float[(int) Math.min(z[2], 1 << 16)];
            for (long i = 0; i < z[2]; i += zero.length) {
                int len = (int) Math.min(zero.length, z[2] - i);
                blocks[(int) z[0]].slice(z[1] + i, len).floats().put(0, zero, 0, len);
            }
        }
        for (Map.Entry<String, List<Op>> f : opsByFile.entrySet()) {
            ShardFiles.Local file = local.get(f.getKey());
            CheckpointMetadata.FileEntry expected = meta.files().get(f.getKey());
            List<CheckedFileReader.Target> targets;
            try (FileChannel ch = FileChannel.open(file.path(), StandardOpenOption.READ)) {
                targets = targets(ch, f.getKey(), file, expected, f.getValue(), blocks);
            }
            CheckedFileReader.read(file.path(), file.name(), expected.bytes(), expected.crc32c(), targets);
        }
        for (int b = 0; b < blocks.length; b++) {
            if (onDevice[b] != null) {
                device.fromHost(onDevice[b], blocks[b]);
            }
        }
    }

    /**
     * The byte ranges of {@code file} the ops need, after checking its header against the metadata. A header that
     * does not parse or does not match is reported as the corruption it is when the file's checksum differs too.
     */
    private List<CheckedFileReader.Target> targets(FileChannel ch, String fileName, ShardFiles.Local file, CheckpointMetadata.FileEntry expected,
                                                   List<Op> ops, Tensor[] blocks) throws IOException {
        long size = ch.size();
        if (size != expected.bytes()) {
            throw CheckedFileReader.sizeError(file.name(), size, expected.bytes());
        }
        Map<String, SafeTensorsHeader.Info> entries = new LinkedHashMap<>();
        long dataStart;
        try {
            SafeTensorsHeader h = SafeTensorsHeader.read(file.path(), ch, size);
            for (SafeTensorsHeader.Info i : h.tensors()) {
                entries.put(i.name(), i);
            }
            dataStart = h.dataStart();
            for (Op op : ops) {
                check(entries.get(op.key()), fileName, op.key());
            }
        } catch (SafeTensorsFormatException | CheckpointException e) {
            String crc = ShardFiles.hex(ShardFiles.crc(file.path()));
            if (!crc.equals(expected.crc32c())) {
                throw new CheckpointException(file.name() + ": corrupted: CRC32C " + crc + ", the metadata says " + expected.crc32c(), e, true);
            }
            if (e instanceof CheckpointException ce) {
                throw ce;
            }
            throw new CheckpointException(file.name() + ": not a valid safetensors file: " + e.getMessage(), e, true);
        }
        List<CheckedFileReader.Target> targets = new ArrayList<>(ops.size());
        for (Op op : ops) {
            long at = dataStart + entries.get(op.key()).begin() + op.src() * Float.BYTES;
            targets.add(new CheckedFileReader.Target(at, blocks[op.block()].slice(op.dst(), op.len()).hostBuffer()));
        }
        return targets;
    }

    private void check(SafeTensorsHeader.Info e, String file, String key) throws CheckpointException {
        if (e == null) {
            throw new CheckpointException(dir + "/" + file + ": has no tensor '" + key + "' (the metadata says it does)", true);
        }
        long want = keyNumel.get(file + "\u0000" + key);
        long numel = SafeTensorsHeader.numel(e.shape());
        if (e.dtype() != DType.F32 || numel != want) {
            throw new CheckpointException(dir + "/" + file + ": tensor '" + key + "' is " + e.dtype() + " of " + numel
                    + " elements, the metadata says F32 of " + want, true);
        }
    }
}
