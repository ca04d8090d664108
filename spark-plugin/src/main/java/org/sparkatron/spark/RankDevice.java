package org.sparkatron.spark;

import java.time.Duration;
import org.apache.spark.BarrierTaskContext;
import org.apache.spark.resource.ResourceInformation;
import org.sparkatron.comm.Communicator;
import org.sparkatron.comm.nccl.NcclCommunicator;
import org.sparkatron.device.Device;
import org.sparkatron.device.GpuProbe;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.device.cuda.CudaDevice;
import org.sparkatron.device.cuda.CudaRuntime;

/**
 * The device and world communicator of one barrier task, chosen with no configuration: a task Spark gave a
 * GPU address ({@code TaskContext.resources().get("gpu")}) runs on that CUDA device with NCCL when CUDA is
 * usable in the executor ({@link CudaRuntime}, which loads no CUDA class unless the {@link GpuProbe} found
 * the libraries); every other task runs on the CPU device with the TCP communicator, as before.
 *
 * @param device      the rank's device (the caller closes it)
 * @param description what the rank reports: "cpu", or "gpu:N; compute: cuda:N NVIDIA ..." / "gpu:N; compute:
 *                    cpu (why not)"
 */
record RankDevice(Device device, String description) {
    /** The decision alone, from the task's GPU addresses and CUDA's availability (tested without Spark). */
    record Choice(int cudaOrdinal, String description) {
        boolean cuda() {
            return cudaOrdinal >= 0;
        }
    }

    static Choice choose(String[] gpuAddresses, CudaRuntime.Availability cuda) {
        if (gpuAddresses == null || gpuAddresses.length == 0) {
            return new Choice(-1, "cpu");
        }
        String address = gpuAddresses[0];
        String prefix = "gpu:" + address + "; compute: ";
        if (!cuda.available()) {
            return new Choice(-1, prefix + "cpu (" + cuda.reason() + ")");
        }
        int ordinal;
        try {
            ordinal = Integer.parseInt(address.trim());
        } catch (NumberFormatException e) {
            return new Choice(-1, prefix + "cpu (GPU address '" + address + "' is not a CUDA device index)");
        }
        if (ordinal < 0 || ordinal >= cuda.deviceCount()) {
            return new Choice(-1, prefix + "cpu (GPU address " + ordinal + " but this executor sees " + cuda.deviceCount()
                    + " CUDA device(s); is CUDA_VISIBLE_DEVICES set by the discovery script?)");
        }
        return new Choice(ordinal, prefix + "cuda:" + ordinal);
    }

    /** Opens this task's device. */
    static RankDevice open(BarrierTaskContext ctx) {
        ResourceInformation gpu = ctx.resourcesJMap().get("gpu");
        String[] addresses = gpu == null ? new String[0] : gpu.addresses();
        Choice c = choose(addresses, addresses.length == 0 ? null : CudaRuntime.availability());
        if (!c.cuda()) {
            return new RankDevice(new CpuDevice(), c.description());
        }
        CudaDevice d = new CudaDevice(c.cudaOrdinal());
        return new RankDevice(d, c.description() + " " + d.describe());
    }

    /** The world communicator: NCCL on a CUDA device (unique id through the barrier), else TCP (shared memory for the collectives of ranks on one host). */
    Communicator connect(BarrierTaskContext ctx, byte[] secret, long timeoutMs) {
        if (device instanceof CudaDevice cuda) {
            return NcclCommunicator.create(cuda, new CommWiring.BarrierRendezvous(ctx), Duration.ofMillis(timeoutMs));
        }
        return CommWiring.connect(ctx, secret, timeoutMs);
    }
}
