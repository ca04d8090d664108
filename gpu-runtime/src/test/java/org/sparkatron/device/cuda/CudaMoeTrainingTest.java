package org.sparkatron.device.cuda;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.sparkatron.device.cpu.Arrays32.assertClose;
import static org.sparkatron.device.cpu.Arrays32.read;

import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.params.ParameterizedTest;
import org.junit.jupiter.params.provider.CsvSource;
import org.sparkatron.device.Device;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.Transformer;
import org.sparkatron.optim.LrSchedule;
import org.sparkatron.parallel.RankContext;
import org.sparkatron.precision.Precision;
import org.sparkatron.train.MarkovCorpus;
import org.sparkatron.train.PackedSamples;
import org.sparkatron.train.Trainer;

/**
 * Mixture-of-experts training steps on the CUDA device against the same steps on the CPU device, from the same
 * initial weights and batches: a Mixtral-style model (4 experts, top-2, aux and z losses) dropless, with capacity
 * dropping, padded to capacity, with a sigmoid router, a shared expert and a dense layer between MoE layers
 * ({@code moe_layer_freq} 2), and with DeepSeek-V3's aux-loss-free expert bias (moved after every step; the
 * weights compared after the last step include it). Per step: the loss, the gradient norm, the aux and z losses and the dropped fraction;
 * after the first step every gradient and weight, after every step the expert biases; nothing allocated after
 * the first step.
 *
 * <p>Tolerances (fp32): the devices' GEMMs sum in different orders (cuBLASLt vs OpenBLAS; the emulation's
 * cuBLASLt sums in double), so logits differ in the last bits and the routing itself is the same discrete choice
 * (the dropped fraction equal exactly); losses, norms and the MoE losses agree to 1e-4 relative over four AdamW
 * steps as CudaTrainingTest's dense models do; gradients after one step to 1e-6 + 1e-3 relative and weights
 * after it to 1e-4 + 1e-3 relative as ExpertParallelParityTest's (Adam's first update is about lr g / (|g| + eps),
 * so a weight whose gradient is near zero moves by a visibly different fraction of lr; later weights drift
 * further that way and are not compared); the expert biases exactly (steps of +-rate from integer counts that
 * the same routing makes equal).
 */
@org.junit.jupiter.api.Tag("cuda")
class CudaMoeTrainingTest {
    static final int STEPS = 4;
    static final int BATCH = 4;

    /**
     * What a device's run saw: per step loss, norm, aux, z, dropped; the first step's gradients and weights after
     * it; the expert biases (if any) after every step.
     */
    record Run(double[] figures, double[] grads, double[] weights, double[] biases) {
    }

    static ModelConfig config(int layers, String extra) throws Exception {
        String json = "{\"model_type\":\"mixtral\",\"num_hidden_layers\":" + layers + ",\"hidden_size\":32,\"intermediate_size\":24,"
                + "\"num_attention_heads\":8,\"num_key_value_heads\":4,\"vocab_size\":61,\"max_position_embeddings\":16,"
                + "\"tie_word_embeddings\":false,\"num_local_experts\":4,\"num_experts_per_tok\":2,"
                + "\"moe_aux_loss_coeff\":0.01,\"moe_z_loss_coeff\":0.001" + (extra.isEmpty() ? "" : "," + extra) + "}";
        return ModelConfig.fromJson(new ObjectMapper().readTree(json));
    }

    static Run train(Device device, ModelConfig cfg) {
        try (device) {
            Transformer m = new Transformer(cfg, RankContext.single(device, Precision.FP32));
            m.initialize(7);
            MarkovCorpus corpus = new MarkovCorpus(cfg.vocabSize(), 4, 5);
            PackedSamples data = PackedSamples.perSequence(corpus.generate(32, 9, 6), 7);
            Trainer tr = new Trainer(m, data, Trainer.Options.defaults(BATCH, LrSchedule.constant(1e-2)));
            double[] figures = new double[5 * STEPS];
            double[] grads = null;
            double[] weights = null;
            java.util.List<Double> biases = new java.util.ArrayList<>();
            long afterFirst = 0;
            for (int s = 0; s < STEPS; s++) {
                Trainer.StepMetrics sm = tr.step();
                assertFalse(sm.skipped(), "no skipped step");
                figures[5 * s] = sm.loss();
                figures[5 * s + 1] = sm.gradNorm();
                figures[5 * s + 2] = sm.moe().auxLoss();
                figures[5 * s + 3] = sm.moe().zLoss();
                figures[5 * s + 4] = sm.moe().dropped();
                double[] now = read(device.toHost(m.params().weights()));
                for (org.sparkatron.model.ParameterSet.Param p : m.params().params()) {
                    if (p.name().endsWith("moe.router.b")) {
                        for (long i = p.offset(); i < p.offset() + p.numel(); i++) {
                            biases.add(now[(int) i]);
                        }
                    }
                }
                if (s == 0) {
                    grads = read(device.toHost(m.params().grads()));
                    weights = read(device.toHost(m.params().weights()));
                    afterFirst = device.systemAllocations();
                }
            }
            assertEquals(afterFirst, device.systemAllocations(), device.name() + ": MoE steps after the first allocate nothing");
            tr.close();
            m.close();
            return new Run(figures, grads, weights, biases.stream().mapToDouble(Double::doubleValue).toArray());
        }
    }

    @ParameterizedTest(name = "{0}")
    @CsvSource(delimiter = '|', value = {
        "dropless | 2 | ",
        "capacity | 2 | \"moe_expert_capacity_factor\":1.0",
        "padded   | 2 | \"moe_expert_capacity_factor\":1.0,\"moe_pad_expert_input_to_capacity\":true",
        "sigmoid, shared expert, dense layer between | 3 | \"scoring_func\":\"sigmoid\",\"shared_expert_intermediate_size\":16,"
                + "\"moe_layer_freq\":2,\"dense_intermediate_size\":40",
        "expert bias (aux-loss-free), Megatron's names | 3 | \"moe_router_score_function\":\"sigmoid\","
                + "\"moe_router_topk_scaling_factor\":2.5,\"moe_router_enable_expert_bias\":true,\"moe_router_bias_update_rate\":0.05,"
                + "\"moe_layer_freq\":[1,0,1],\"dense_intermediate_size\":40",
    })
    void stepsMatchTheCpuDevice(String variant, int layers, String extra) throws Exception {
        ModelConfig cfg = config(layers, extra == null ? "" : extra);
        Run gpu = train(CudaTests.deviceOrSkip(0), cfg);
        Run cpu = train(new CpuDevice(), cfg);
        String[] names = {"loss", "grad norm", "aux loss", "z-loss", "dropped fraction"};
        for (int i = 0; i < cpu.figures().length; i++) {
            String what = variant + ": " + names[i % 5] + " of step " + (i / 5 + 1);
            double tol = i % 5 == 4 ? 0 : 1e-4 * Math.abs(cpu.figures()[i]);
            assertEquals(cpu.figures()[i], gpu.figures()[i], tol, what);
        }
        if (cfg.moe().dropsTokens()) {
            assertTrue(cpu.figures()[4] > 0, variant + ": capacity factor 1 drops assignments, so the drop path runs");
        }
        assertClose(variant + ": gradients after step 1", cpu.grads(), gpu.grads(), 1e-6, 1e-3);
        assertClose(variant + ": weights after step 1", cpu.weights(), gpu.weights(), 1e-4, 1e-3);
        assertClose(variant + ": expert biases after every step (sign steps from equal counts)", cpu.biases(), gpu.biases(), 0, 0);
        if (cfg.moe().expertBias()) { // (at rate 0.05 this tiny router's bias dominates and flips back and forth)
            assertTrue(java.util.Arrays.stream(cpu.biases()).anyMatch(b -> b != 0), variant + ": the bias moved");
        }
        assertTrue(gpu.figures()[0] > gpu.figures()[5 * (STEPS - 1)], variant + ": the CUDA run learns");
    }
}
