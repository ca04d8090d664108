package org.sparkatron.parallel;

import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.ReduceOp;
import org.sparkatron.device.Device;
import org.sparkatron.device.MemoryKind;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The communication mappings of tensor and sequence parallelism, each a {@link Mapping} with its
 * forward and backward (Megatron Core's {@code copy_to_tensor_model_parallel_region} and friends):
 *
 * <pre>
 *   mapping                         forward                          backward
 *   CopyToTensorRegion              identity                         all-reduce (sum)
 *   ReduceFromTensorRegion          all-reduce (sum)                 identity
 *   ScatterToTensorRegion           keep own column block            all-gather columns
 *   GatherFromTensorRegion          all-gather columns               keep own column block
 *   ScatterToSequenceRegion         keep own row block               all-gather rows
 *   GatherFromSequenceRegion        all-gather rows                  reduce-scatter rows (sum)
 *   ReduceScatterToSequenceRegion   reduce-scatter rows (sum)        all-gather rows
 * </pre>
 * Each backward is the adjoint of its forward: e.g. the input of a column-parallel layer is used by every
 * rank, so its gradient is the sum of every rank's contribution. Copies are device copies and collectives
 * run on device tensors, all stream-ordered with the rank's kernels. Instances keep no state but scratch;
 * see {@link Mapping} for blocking and failure.
 */
public final class Mappings {
    private Mappings() {
    }

    private abstract static class Base implements Mapping {
        final Communicator group;
        final Device device;
        final int size;
        final int rank;

        Base(RankContext ctx) {
            this.group = ctx.tp().group();
            this.device = ctx.device();
            this.size = ctx.tp().size();
            this.rank = ctx.tp().rank();
        }

        void check(Tensor t, String what) {
            Rows.requireF32(t, what);
        }

        /** in holds size equal blocks; out gets block {@code rank}. */
        void keepBlock(Tensor in, Tensor out) {
            check(in, "input");
            check(out, "output");
            Rows.requireNumel(in, out.numel() * size, "full tensor");
            Rows.copy(device, in, out.numel() * rank, out, 0, out.numel());
        }

        void gatherBlocks(Tensor in, Tensor out) {
            check(in, "input");
            check(out, "output");
            Rows.requireNumel(out, in.numel() * size, "full tensor");
            group.allGather(in, out);
        }

        void reduceScatterBlocks(Tensor in, Tensor out) {
            check(in, "input");
            check(out, "output");
            Rows.requireNumel(in, out.numel() * size, "full tensor");
            if (size == 1) {
                Rows.copyAll(device, in, out);
            } else {
                group.reduceScatter(in, out, ReduceOp.SUM);
            }
        }

        void allReduce(Tensor in, Tensor out) {
            check(in, "input");
            check(out, "output");
            Rows.copyAll(device, in, out);
            if (size > 1) {
                group.allReduce(out, ReduceOp.SUM);
            }
        }

        void identity(Tensor in, Tensor out) {
            check(in, "input");
            check(out, "output");
            Rows.copyAll(device, in, out);
        }
    }

    /** Identity forward, all-reduce backward: the input of a column-parallel layer. */
    public static final class CopyToTensorRegion extends Base {
        public CopyToTensorRegion(RankContext ctx) {
            super(ctx);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            identity(in, out);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            allReduce(gradOut, gradIn);
        }
    }

    /** All-reduce forward, identity backward: the output of a row-parallel layer. */
    public static final class ReduceFromTensorRegion extends Base {
        public ReduceFromTensorRegion(RankContext ctx) {
            super(ctx);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            allReduce(in, out);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            identity(gradOut, gradIn);
        }
    }

    /** Sequence parallelism: full rows in, this rank's row block out; backward all-gathers. */
    public static final class ScatterToSequenceRegion extends Base {
        public ScatterToSequenceRegion(RankContext ctx) {
            super(ctx);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            keepBlock(in, out);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            gatherBlocks(gradOut, gradIn);
        }
    }

    /**
     * Sequence parallelism: this rank's row block in, all rows out (the input of a column-parallel layer);
     * backward reduce-scatters, since every rank's full-row gradient is a partial sum.
     */
    public static final class GatherFromSequenceRegion extends Base {
        public GatherFromSequenceRegion(RankContext ctx) {
            super(ctx);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            gatherBlocks(in, out);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            reduceScatterBlocks(gradOut, gradIn);
        }
    }

    /** Sequence parallelism: partial full rows in, summed row block out (a row-parallel layer's output). */
    public static final class ReduceScatterToSequenceRegion extends Base {
        public ReduceScatterToSequenceRegion(RankContext ctx) {
            super(ctx);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            reduceScatterBlocks(in, out);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            gatherBlocks(gradOut, gradIn);
        }
    }

    /** Column split: rows of {@code size * w} columns in, this rank's {@code w} columns out. */
    public static final class ScatterToTensorRegion extends Base {
        private final int rows;
        private final Columns cols;

        /** For tensors of {@code rows} rows; the full width is {@code size * localCols}. */
        public ScatterToTensorRegion(RankContext ctx, int rows, int localCols) {
            super(ctx);
            this.rows = rows;
            this.cols = new Columns(this, localCols);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            cols.split(in, out, rows);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            cols.gather(gradOut, gradIn, rows);
        }

        @Override
        public void close() {
            cols.close();
        }
    }

    /** Column gather: this rank's {@code w} columns in, all {@code size * w} columns out. */
    public static final class GatherFromTensorRegion extends Base {
        private final int rows;
        private final Columns cols;

        public GatherFromTensorRegion(RankContext ctx, int rows, int localCols) {
            super(ctx);
            this.rows = rows;
            this.cols = new Columns(this, localCols);
        }

        @Override
        public void forward(Tensor in, Tensor out) {
            cols.gather(in, out, rows);
        }

        @Override
        public void backward(Tensor gradOut, Tensor gradIn) {
            cols.split(gradOut, gradIn, rows);
        }

        @Override
        public void close() {
            cols.close();
        }
    }

    /** Last-dimension split and gather; the gather goes through a rank-major scratch block. */
    private static final class Columns {
        private final Base m;
        private final int local;
        private Tensor scratch;

        Columns(Base m, int local) {
            this.m = m;
            this.local = local;
        }

        void close() {
            m.device.release(scratch);
            scratch = null;
        }

        void split(Tensor full, Tensor part, int rows) {
            m.check(full, "input");
            m.check(part, "output");
            Rows.requireNumel(full, (long) rows * local * m.size, "full tensor");
            Rows.requireNumel(part, (long) rows * local, "column block");
            Rows.copyColumns(m.device, full, local * m.size, local * m.rank, part, local, 0, rows, local);
        }

        void gather(Tensor part, Tensor full, int rows) {
            m.check(part, "input");
            m.check(full, "output");
            Rows.requireNumel(part, (long) rows * local, "column block");
            Rows.requireNumel(full, (long) rows * local * m.size, "full tensor");
            if (m.size == 1) {
                Rows.copyAll(m.device, part, full);
                return;
            }
            if (scratch == null || scratch.numel() != full.numel()) {
                m.device.release(scratch);
                scratch = m.device.allocate(MemoryKind.WORKSPACE, DType.F32, full.numel());
            }
            m.group.allGather(part, scratch); // [size][rows][local]
            for (int r = 0; r < m.size; r++) {
                Rows.copyColumns(m.device, scratch.slice((long) r * rows * local, (long) rows * local), local, 0, full,
                        local * m.size, r * local, rows, local);
            }
        }
    }
}
