package org.sparkatron.parallel;

import java.nio.IntBuffer;
import org.sparkatron.comm.Communicator;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;
import org.sparkatron.train.SampleSource;

/**
 * The samples of a tensor-parallel group: TP rank 0 reads them from its {@link SampleSource} and
 * broadcasts each one to the other ranks of the group, so every rank trains on the same batch while only
 * one reads data (Megatron's {@code broadcast_data}). The end of the source is broadcast too, so every
 * rank sees it at the same sample.
 *
 * <p>Blocking: each {@link #next} is a broadcast over the TP group; a failed peer surfaces as the
 * communicator's exception. One rank's training thread.
 */
public final class TpBroadcastSource implements SampleSource {
    private final SampleSource source;
    private final Communicator group;
    private final int length;
    private final Tensor buf;
    private final int[] row;
    private long consumed;

    /**
     * @param source the data on TP rank 0 (ignored, may be null, on the others)
     * @param sampleLength tokens per sample, the same on every rank
     */
    public TpBroadcastSource(SampleSource source, int sampleLength, Communicator group) {
        if (group.rank() == 0 && source == null) {
            throw new IllegalArgumentException("TP rank 0 needs the sample source");
        }
        if (group.rank() == 0 && source.sampleLength() != sampleLength) {
            throw new IllegalArgumentException("source gives samples of " + source.sampleLength() + " tokens, expected " + sampleLength);
        }
        this.source = group.rank() == 0 ? source : null;
        this.group = group;
        this.length = sampleLength;
        this.buf = Tensor.allocateHost(DType.I32, sampleLength + 1);
        this.row = new int[sampleLength];
    }

    @Override
    public int sampleLength() {
        return length;
    }

    @Override
    public boolean next(int[] out, int offset) {
        IntBuffer b = buf.ints();
        if (source != null) {
            boolean ok = source.next(row, 0);
            b.put(0, ok ? 1 : 0);
            if (ok) {
                b.put(1, row);
            }
        }
        group.broadcast(buf, 0);
        if (b.get(0) == 0) {
            return false;
        }
        b.get(1, out, offset, length);
        consumed++;
        return true;
    }

    @Override
    public long consumed() {
        return consumed;
    }

    @Override
    public void close() {
        if (source != null) {
            source.close();
        }
    }
}
