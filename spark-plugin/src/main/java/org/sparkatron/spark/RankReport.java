package org.sparkatron.spark;

import java.io.ByteArrayInputStream;
import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.ObjectInputStream;
import java.io.ObjectOutputStream;
import java.io.Serializable;
import java.util.List;

/**
 * What one rank sends back when its training finishes: where it ran (host, executor, the device it
 * bound), and from rank 0 the per-step metrics and the trained weights. Crosses the closing shuffle as
 * bytes, so it needs no Kryo registration in the user's session.
 */
public record RankReport(int rank, int attempt, String host, String executorId, String device, long pid,
                         long samplesRead, List<String> metrics, float[] weights) implements Serializable {

    byte[] toBytes() {
        ByteArrayOutputStream bos = new ByteArrayOutputStream();
        try (ObjectOutputStream o = new ObjectOutputStream(bos)) {
            o.writeObject(this);
        } catch (IOException e) {
            throw new IllegalStateException(e);
        }
        return bos.toByteArray();
    }

    static RankReport fromBytes(byte[] b) {
        try (ObjectInputStream in = new ObjectInputStream(new ByteArrayInputStream(b))) {
            return (RankReport) in.readObject();
        } catch (IOException | ClassNotFoundException e) {
            throw new IllegalStateException("corrupt rank report: " + e, e);
        }
    }

    /** One JSON line without the weights, for logs and {@code ranks.json}. */
    public String describe() {
        return String.format(java.util.Locale.ROOT,
                "{\"rank\": %d, \"attempt\": %d, \"host\": \"%s\", \"executor\": \"%s\", \"device\": \"%s\", \"pid\": %d, \"samples\": %d}",
                rank, attempt, host, executorId, device, pid, samplesRead);
    }
}
