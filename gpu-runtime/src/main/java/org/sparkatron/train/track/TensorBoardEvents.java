package org.sparkatron.train.track;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.io.OutputStream;
import java.nio.charset.StandardCharsets;
import java.util.zip.CRC32C;

/**
 * TensorBoard event files written from Java, readable by TensorBoard itself: TFRecord framing (little-endian
 * uint64 length, masked CRC32C of the length, the payload, masked CRC32C of the payload) around
 * {@code tensorflow.Event} protocol buffers, encoded here by hand (they are four fields deep): a first event
 * with {@code file_version = "brain.Event:2"}, then one event per scalar with {@code wall_time},
 * {@code step} and a {@code Summary} holding one {@code Value{tag, simple_value}}. Name the file
 * {@link #fileName} inside the log directory so TensorBoard finds it.
 *
 * <p>Threads: all methods are synchronized. Each scalar is flushed to the stream so a running TensorBoard
 * sees it; pass a stream whose {@code flush} makes data visible (an HDFS stream's hflush). I/O errors
 * propagate.
 */
public final class TensorBoardEvents implements AutoCloseable {
    private final OutputStream out;

    /** Starts an event file on {@code out} (writes the file-version event). */
    public TensorBoardEvents(OutputStream out, double wallTimeSeconds) throws IOException {
        this.out = out;
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        fixed64Field(e, 1, Double.doubleToRawLongBits(wallTimeSeconds));
        bytesField(e, 3, "brain.Event:2".getBytes(StandardCharsets.UTF_8));
        write(e.toByteArray());
    }

    /** TensorBoard's naming: {@code events.out.tfevents.<seconds>.<host>}. */
    public static String fileName(long wallMillis, String host) {
        return "events.out.tfevents." + wallMillis / 1000 + "." + host.replaceAll("[^A-Za-z0-9._-]", "_");
    }

    /** Appends one scalar ({@code tag} such as "train/loss") at {@code step} and flushes. */
    public synchronized void scalar(String tag, long step, double value, double wallTimeSeconds) throws IOException {
        ByteArrayOutputStream v = new ByteArrayOutputStream();
        bytesField(v, 1, tag.getBytes(StandardCharsets.UTF_8));
        tag(v, 2, 5); // simple_value: float, fixed32
        int bits = Float.floatToRawIntBits((float) value);
        for (int i = 0; i < 4; i++) {
            v.write(bits >>> (8 * i));
        }
        ByteArrayOutputStream summary = new ByteArrayOutputStream();
        bytesField(summary, 1, v.toByteArray());
        ByteArrayOutputStream e = new ByteArrayOutputStream();
        fixed64Field(e, 1, Double.doubleToRawLongBits(wallTimeSeconds));
        tag(e, 2, 0);
        varint(e, step);
        bytesField(e, 5, summary.toByteArray());
        write(e.toByteArray());
    }

    private synchronized void write(byte[] payload) throws IOException {
        byte[] len = new byte[8];
        for (int i = 0; i < 8; i++) {
            len[i] = (byte) ((long) payload.length >>> (8 * i));
        }
        out.write(len);
        writeInt(maskedCrc32c(len));
        out.write(payload);
        writeInt(maskedCrc32c(payload));
        out.flush();
    }

    private void writeInt(int v) throws IOException {
        for (int i = 0; i < 4; i++) {
            out.write(v >>> (8 * i));
        }
    }

    /** TFRecord's checksum: CRC32C rotated right by 15 bits plus 0xa282ead8. */
    static int maskedCrc32c(byte[] data) {
        CRC32C c = new CRC32C();
        c.update(data);
        int crc = (int) c.getValue();
        return ((crc >>> 15) | (crc << 17)) + 0xa282ead8;
    }

    private static void tag(ByteArrayOutputStream o, int field, int wireType) {
        varint(o, ((long) field << 3) | wireType);
    }

    private static void varint(ByteArrayOutputStream o, long v) {
        while ((v & ~0x7FL) != 0) {
            o.write((int) ((v & 0x7F) | 0x80));
            v >>>= 7;
        }
        o.write((int) v);
    }

    private static void fixed64Field(ByteArrayOutputStream o, int field, long bits) {
        tag(o, field, 1);
        for (int i = 0; i < 8; i++) {
            o.write((int) (bits >>> (8 * i)));
        }
    }

    private static void bytesField(ByteArrayOutputStream o, int field, byte[] b) {
        tag(o, field, 2);
        varint(o, b.length);
        o.write(b, 0, b.length);
    }

    @Override
    public synchronized void close() throws IOException {
        out.close();
    }
}
