package org.sparkatron.checkpoint;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.ReadOnlyBufferException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.HostStorage;
import org.sparkatron.tensor.Tensor;

@Timeout(30)
class SafeTensorsRoundTripTest {
    @TempDir
    Path dir;

    /**
     * A zero-filled host tensor in its own direct buffer. (Built on HostStorage.wrap rather than
     * Tensor.allocateHost so these tests do not depend on the arena allocator's alignment logic.)
     */
    static Tensor host(DType dtype, int... shape) {
        long n = 1;
        for (int d : shape) {
            n *= d;
        }
        return new Tensor(HostStorage.wrap(ByteBuffer.allocateDirect((int) (n * dtype.bytes()))), 0, dtype, shape);
    }

    /** A host tensor whose bytes are a deterministic pattern depending on the seed. */
    static Tensor patterned(DType dtype, int seed, int... shape) {
        Tensor t = host(dtype, shape);
        ByteBuffer b = t.hostBuffer();
        for (int i = 0; i < b.capacity(); i++) {
            b.put(i, (byte) (i * 31 + seed * 7 + 1));
        }
        return t;
    }

    /** Every dtype, with odd shapes, a 0-d scalar and empty tensors. */
    static LinkedHashMap<String, Tensor> allDtypes() {
        LinkedHashMap<String, Tensor> m = new LinkedHashMap<>();
        int seed = 0;
        for (DType d : DType.values()) {
            String n = d.safetensorsName();
            m.put("odd." + n, patterned(d, seed++, 3, 5, 7));
            m.put("scalar." + n, patterned(d, seed++));
            m.put("empty." + n, patterned(d, seed++, 4, 0, 3));
            m.put("vec." + n, patterned(d, seed++, 1));
        }
        // Names that are not identifiers survive the JSON header, including non-ASCII text.
        m.put("h.0.attn.c_attn.weight \"quoted\" \u00e9\u4e2d", patterned(DType.F32, 99, 2, 1, 3));
        return m;
    }

    @Test
    void roundTripsEveryDtypeOddShapesScalarsAndEmptyTensors() throws IOException {
        LinkedHashMap<String, Tensor> in = allDtypes();
        Map<String, String> meta = Map.of("format", "pt", "step", "12");
        Path p = dir.resolve("all.safetensors");
        SafeTensors.write(p, in, meta);
        try (SafeTensorsFile f = SafeTensors.open(p)) {
            assertEquals(new ArrayList<>(in.keySet()), new ArrayList<>(f.names()), "names keep write order");
            assertEquals(meta, f.metadata());
            for (Map.Entry<String, Tensor> e : in.entrySet()) {
                String n = e.getKey();
                Tensor want = e.getValue();
                assertEquals(want.dtype(), f.dtype(n), n);
                assertArrayEquals(want.shape(), f.shape(n), n);
                Tensor got = f.tensor(n);
                assertEquals(want.dtype(), got.dtype(), n);
                assertArrayEquals(want.shape(), got.shape(), n);
                assertEquals(ByteOrder.nativeOrder(), got.hostBuffer().order(), "views are native order");
                assertEquals(want.hostBuffer(), got.hostBuffer(), "bytes of " + n);
            }
        }
        // Header length is a multiple of 8 and the header is padded with spaces (reference layout).
        byte[] raw = Files.readAllBytes(p);
        long n = ByteBuffer.wrap(raw).order(ByteOrder.LITTLE_ENDIAN).getLong(0);
        assertEquals(0, n % 8, "header length " + n);
        assertTrue(raw[(int) (8 + n - 1)] == '}' || raw[(int) (8 + n - 1)] == ' ');
    }

    @Test
    void perTensorMappingGivesTheSameViewsAsWholeFileMapping() throws IOException {
        // Files over 2 GiB are mapped tensor by tensor; force that path with a threshold of 0 bytes.
        LinkedHashMap<String, Tensor> in = allDtypes();
        Path p = dir.resolve("split.safetensors");
        SafeTensors.write(p, in, null);
        try (SafeTensorsFile f = SafeTensorsFile.open(p, 0)) {
            assertTrue(f.metadata().isEmpty());
            for (Map.Entry<String, Tensor> e : in.entrySet()) {
                assertEquals(e.getValue().hostBuffer(), f.tensor(e.getKey()).hostBuffer(), e.getKey());
            }
            float[] x = f.readF32("odd.F32");
            assertEquals(in.get("odd.F32").floats().get(104), x[104]);
        }
    }

    @Test
    void f32ViewsReadValuesInNativeOrder() throws IOException {
        Tensor t = host(DType.F32, 2, 3);
        float[] v = {1.5f, -2.25f, 1e-30f, Float.MAX_VALUE, -0.0f, 3.0f};
        t.floats().put(v);
        LinkedHashMap<String, Tensor> in = new LinkedHashMap<>();
        in.put("w", t);
        Path p = dir.resolve("w.safetensors");
        SafeTensors.write(p, in, Map.of());
        try (SafeTensorsFile f = SafeTensors.open(p)) {
            float[] got = new float[6];
            f.tensor("w").floats().get(got);
            assertArrayEquals(v, got);
            assertArrayEquals(v, f.readF32("w"));
            // Views of the read-only mapping cannot be written through.
            assertThrows(ReadOnlyBufferException.class, () -> f.tensor("w").floats().put(0, 1f));
        }
    }

    @Test
    void readF32WidensBf16AndF16Exactly() throws IOException {
        Tensor bf = host(DType.BF16, 3);
        bf.hostBuffer().asShortBuffer().put(new short[] {(short) 0x3F80, (short) 0xC040, (short) 0x0001});
        Tensor h = host(DType.F16, 6);
        h.hostBuffer().asShortBuffer().put(new short[] {
            (short) 0x3C00, (short) 0xC500, (short) 0x7BFF, (short) 0x0001, (short) 0xFC00, (short) 0x8000});
        Tensor i = host(DType.I32, 1);
        LinkedHashMap<String, Tensor> in = new LinkedHashMap<>();
        in.put("bf", bf);
        in.put("h", h);
        in.put("i", i);
        Path p = dir.resolve("conv.safetensors");
        SafeTensors.write(p, in, null);
        try (SafeTensorsFile f = SafeTensors.open(p)) {
            assertArrayEquals(new float[] {1f, -3f, Float.intBitsToFloat(0x00010000)}, f.readF32("bf"));
            assertArrayEquals(new float[] {1f, -5f, 65504f, 0x1p-24f, Float.NEGATIVE_INFINITY, -0.0f}, f.readF32("h"));
            IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> f.readF32("i"));
            assertTrue(e.getMessage().contains("'i' is I32"), e.getMessage());
        }
    }

    @Test
    void rewriteIsAtomicAndLeavesNoTemporaryFiles() throws IOException {
        Path p = dir.resolve("model.safetensors");
        LinkedHashMap<String, Tensor> first = new LinkedHashMap<>();
        first.put("a", patterned(DType.F32, 1, 4));
        SafeTensors.write(p, first, null);
        try (SafeTensorsFile old = SafeTensors.open(p)) {
            LinkedHashMap<String, Tensor> second = new LinkedHashMap<>();
            second.put("b", patterned(DType.BF16, 2, 5));
            SafeTensors.write(p, second, Map.of("v", "2"));
            // The open file still reads the old data: the new file replaced it by rename, not in place.
            assertEquals(first.get("a").hostBuffer(), old.tensor("a").hostBuffer());
            try (SafeTensorsFile now = SafeTensors.open(p)) {
                assertEquals(List.of("b"), new ArrayList<>(now.names()));
                assertEquals(second.get("b").hostBuffer(), now.tensor("b").hostBuffer());
            }
        }
        try (Stream<Path> s = Files.list(dir)) {
            assertEquals(List.of(p), s.toList(), "only the target remains in the directory");
        }
    }

    @Test
    void writerRejectsReservedNamesAndLeavesTargetUntouched() throws IOException {
        Path p = dir.resolve("x.safetensors");
        LinkedHashMap<String, Tensor> bad = new LinkedHashMap<>();
        bad.put("__metadata__", patterned(DType.F32, 1, 2));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> SafeTensors.write(p, bad, null));
        assertTrue(e.getMessage().contains("__metadata__"), e.getMessage());
        assertFalse(Files.exists(p));
    }

    @Test
    void unknownNameAndClosedFileGiveClearErrors() throws IOException {
        Path p = dir.resolve("y.safetensors");
        LinkedHashMap<String, Tensor> in = new LinkedHashMap<>();
        in.put("a", patterned(DType.F32, 1, 2));
        SafeTensors.write(p, in, null);
        SafeTensorsFile f = SafeTensors.open(p);
        Tensor early = f.tensor("a");
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> f.tensor("nope"));
        assertTrue(e.getMessage().contains("no tensor named 'nope'") && e.getMessage().contains("y.safetensors"),
                e.getMessage());
        f.close();
        IllegalStateException c = assertThrows(IllegalStateException.class, () -> f.tensor("a"));
        assertTrue(c.getMessage().contains("closed"), c.getMessage());
        // A view made before close stays readable.
        assertEquals(in.get("a").hostBuffer(), early.hostBuffer());
    }
}
