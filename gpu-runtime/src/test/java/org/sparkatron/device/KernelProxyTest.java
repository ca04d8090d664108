package org.sparkatron.device;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.ByteArrayOutputStream;
import java.io.PrintStream;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.charset.StandardCharsets;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.sparkatron.bench.KernelProfile;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.device.cpu.CpuKernels;
import org.sparkatron.precision.Precision;
import org.sparkatron.precision.RoundingKernels;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/**
 * The wrappers of a kernel set see its mixture-of-experts kernels ({@link Kernels#moe()}) too: a {@link KernelProxy}
 * runs every MoE call through its {@code around} (the moe() call itself is no kernel), the strict device's
 * host-access scope covers them (its memory refuses access outside one), the kernel profile times them, and
 * the 16-bit emulation rounds what they store.
 */
class KernelProxyTest {

    private static Tensor i32(Device d, int... values) {
        Tensor t = d.allocate(MemoryKind.WORKSPACE, DType.I32, values.length);
        ByteBuffer b = ByteBuffer.allocateDirect(4 * values.length).order(ByteOrder.nativeOrder());
        b.asIntBuffer().put(values);
        d.upload(t, b);
        return t;
    }

    private static Tensor i32(int... values) {
        Tensor t = Tensor.allocateHost(DType.I32, values.length);
        t.ints().put(values);
        return t;
    }

    @Test
    void everyMoeCallRunsThroughAroundAndTheMoeLookupDoesNot() {
        List<String> seen = new ArrayList<>();
        Kernels k = KernelProxy.wrap(new CpuKernels(false), (kernel, args, call) -> {
            seen.add(kernel.getDeclaringClass().getSimpleName() + "." + kernel.getName());
            return call.proceed();
        });
        MoeKernels moe = k.moe();
        assertSame(moe, k.moe(), "one MoE proxy per kernel set");
        assertEquals(List.of(), seen, "moe() is not a kernel");
        Tensor tally = Tensor.allocateHost(DType.F64, 3);
        k.zero(tally);
        moe.countTokens(tally, i32(2, 0, 5), 3);
        assertEquals(List.of("Kernels.zero", "MoeKernels.countTokens"), seen);
        assertEquals(5.0, tally.hostBuffer().getDouble(16));
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class,
                () -> k.round(tally, tally, 1, DType.F32), "the target's exception, unwrapped");
        assertTrue(e.getMessage().contains("round to BF16 or F16"), e.getMessage());
    }

    @Test
    void strictDeviceScopesItsMoeKernels() {
        try (CpuDevice d = CpuDevice.strict()) {
            Tensor tally = d.zeros(MemoryKind.WORKSPACE, DType.F64, 3);
            Tensor counts = i32(d, 1, 4, 2);
            assertThrows(IllegalStateException.class, () -> counts.ints().get(0), "outside a kernel the memory refuses access");
            d.kernels().moe().countTokens(tally, counts, 3); // would throw the same if the MoE kernels ran unscoped
            d.kernels().moe().countTokens(tally, counts, 3);
            assertArrayEquals(new double[] {2, 8, 4}, TestDevices.readDoubles(d, tally));
        }
    }

    @Test
    void profileTimesMoeKernelsUnderTheirOwnNames() {
        KernelProfile profile = new KernelProfile();
        Kernels k = profile.wrap(new CpuKernels(false));
        Tensor tally = Tensor.allocateHost(DType.F64, 2);
        k.zero(tally);
        Tensor counts = i32(3, 1);
        for (int i = 0; i < 1000; i++) {
            k.moe().countTokens(tally, counts, 2);
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        profile.print(new PrintStream(out, true, StandardCharsets.UTF_8), 1, 1e-9, 1);
        String table = out.toString(StandardCharsets.UTF_8);
        assertTrue(table.matches("(?s).*\\nmoe\\.countTokens +1000\\.0 .*"), table);
    }

    @Test
    void sixteenBitEmulationRoundsWhatTheMoeKernelsStore() {
        Kernels k = RoundingKernels.wrap(new CpuKernels(false), Precision.BF16);
        assertSame(k.moe(), k.moe());
        int n = 2;
        int c = 4;
        Tensor y = Tensor.allocateHost(DType.F32, n, c);
        for (int i = 0; i < n * c; i++) {
            y.floats().put(i, 1f + i * 0x1p-20f); // below bf16's precision unless i is 0
        }
        Tensor rowMap = i32(0, 1);
        Tensor probs = Tensor.allocateHost(DType.F32, n, 1);
        probs.floats().put(0, 1f).put(1, 1f);
        Tensor out = Tensor.allocateHost(DType.F32, n, c);
        k.moe().unpermute(out, y, rowMap, probs, n, c, 1);
        for (int i = 0; i < n * c; i++) {
            assertEquals(1f, out.floats().get(i), "combined output " + i + " stored in bf16");
        }
    }
}
