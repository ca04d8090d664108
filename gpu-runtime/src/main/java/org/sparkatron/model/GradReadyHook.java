package org.sparkatron.model;

/**
 * Told, during a training step's last backward of each model chunk, that a parameter received its final
 * gradient contribution of the step (the kernels that wrote it were issued): Megatron's post-accumulate-grad
 * hook, with which data parallelism starts reducing a gradient bucket while the backward continues. A
 * parameter used twice on one rank (a tied embedding without pipelining) is reported twice. Called on the
 * rank's thread; parameters are named by their index in the model's {@link ParameterSet}.
 */
public interface GradReadyHook {
    void ready(int param);
}
