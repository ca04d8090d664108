package org.sparkatron.model;

import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.HfCheckpoint;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.checkpoint.SafeTensors;
import org.sparkatron.device.TestDevices;
import org.sparkatron.tensor.DType;
import org.sparkatron.tensor.Tensor;

/** Configs, weight files and token batches that are wrong get errors that name the problem. */
class BadModelInputTest {
    private static final ObjectMapper JSON = new ObjectMapper();

    private static ObjectNode gpt2() {
        return JSON.createObjectNode().put("model_type", "gpt2").put("n_layer", 1).put("n_embd", 16).put("n_head", 4)
                .put("n_positions", 8).put("vocab_size", 50);
    }

    private static ObjectNode llama() {
        return JSON.createObjectNode().put("model_type", "llama").put("num_hidden_layers", 1).put("hidden_size", 16)
                .put("num_attention_heads", 4).put("num_key_value_heads", 2).put("intermediate_size", 24)
                .put("vocab_size", 50).put("max_position_embeddings", 8);
    }

    private static void refused(ObjectNode cfg, String... fragments) {
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ModelConfig.fromJson(cfg));
        for (String f : fragments) {
            assertTrue(e.getMessage().contains(f), "message '" + e.getMessage() + "' should contain '" + f + "'");
        }
    }

    @Test
    void inconsistentConfigsAreRefused() {
        refused(gpt2().put("n_head", 5), "hidden size 16", "not divisible", "attention heads 5");
        refused(llama().put("num_key_value_heads", 3), "attention heads 4", "key/value heads 3");
        refused(llama().put("hidden_size", 20).put("num_attention_heads", 4).put("num_key_value_heads", 4), "even head dimension");
        refused(gpt2().put("n_layer", 0), "number of layers", "positive");
        refused(gpt2().put("vocab_size", "many"), "vocab_size", "integer");
        ObjectNode noLayers = gpt2();
        noLayers.remove("n_layer");
        refused(noLayers, "missing required key 'n_layer'");
        refused(gpt2().put("model_type", "bert"), "unsupported model_type 'bert'");
        refused(llama().put("hidden_act", "gelu"), "hidden_act 'gelu'");
        refused(gpt2().put("activation_function", "relu"), "activation_function 'relu'");
    }

    @Test
    void configRoundTripsThroughJson() {
        for (ObjectNode n : new ObjectNode[] {gpt2(), llama().put("tie_word_embeddings", true)}) {
            ModelConfig c = ModelConfig.fromJson(n);
            assertTrue(c.equals(ModelConfig.fromJson(c.toJson())), c + " survives toJson/fromJson");
        }
    }

    @Test
    void weightFileWithWrongShapeIsRefusedNamingTheTensor(@TempDir Path dir) throws Exception {
        ModelConfig cfg = ModelConfig.fromJson(llama());
        Transformer model = new Transformer(cfg, TestDevices.create());
        model.initialize(1);
        ModelStore.save(model, dir);
        // rewrite the file with one tensor of the wrong shape
        LinkedHashMap<String, Tensor> tensors = HfCheckpoint.toHf(cfg, model.params(), false);
        tensors.put("model.layers.0.self_attn.k_proj.weight", Tensor.allocateHost(DType.F32, 16, 16));
        SafeTensors.write(dir.resolve("model.safetensors"), tensors, Map.of());
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> ModelStore.load(dir, TestDevices.create()));
        assertTrue(e.getMessage().contains("model.layers.0.self_attn.k_proj.weight") && e.getMessage().contains("[16, 16]")
                && e.getMessage().contains("expected [8, 16]"), e.getMessage());

        tensors = HfCheckpoint.toHf(cfg, model.params(), false);
        tensors.remove("model.norm.weight");
        SafeTensors.write(dir.resolve("model.safetensors"), tensors, Map.of());
        e = assertThrows(IllegalArgumentException.class, () -> ModelStore.load(dir, TestDevices.create()));
        assertTrue(e.getMessage().contains("missing tensor 'model.norm.weight'"), e.getMessage());

        tensors = HfCheckpoint.toHf(cfg, model.params(), false);
        tensors.put("model.layers.1.input_layernorm.weight", Tensor.allocateHost(DType.F32, 16));
        SafeTensors.write(dir.resolve("model.safetensors"), tensors, Map.of());
        e = assertThrows(IllegalArgumentException.class, () -> ModelStore.load(dir, TestDevices.create()));
        assertTrue(e.getMessage().contains("unexpected tensors [model.layers.1.input_layernorm.weight]"), e.getMessage());
    }

    @Test
    void truncatedWeightFileIsRefusedNamingTheFile(@TempDir Path dir) throws Exception {
        Transformer model = new Transformer(ModelConfig.fromJson(gpt2()), TestDevices.create());
        model.initialize(1);
        ModelStore.save(model, dir);
        Path f = dir.resolve("model.safetensors");
        byte[] all = Files.readAllBytes(f);
        Files.write(f, java.util.Arrays.copyOf(all, all.length - 100));
        Exception e = assertThrows(Exception.class, () -> ModelStore.load(dir, TestDevices.create()));
        assertTrue(e.getMessage().contains(f.toString()), e.getMessage());
    }

    @Test
    void tokenOutsideTheVocabularyIsRefusedWithItsPosition() {
        Transformer model = new Transformer(ModelConfig.fromJson(gpt2()), TestDevices.create());
        model.initialize(1);
        int[] batch = {1, 2, 3, 4, 5, 2, 50, 7, 1};
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> model.loss(batch, 1, 8, null));
        assertTrue(e.getMessage().contains("token id 50 (sample 0, position 6)") && e.getMessage().contains("vocabulary of 50"),
                e.getMessage());
        IllegalArgumentException tooLong = assertThrows(IllegalArgumentException.class,
                () -> model.loss(new int[20], 1, 19, null));
        assertTrue(tooLong.getMessage().contains("sequence length 19 exceeds the model's 8 positions"), tooLong.getMessage());
    }

    @Test
    void paddedVocabularyNeverLeaksIntoSavedFiles(@TempDir Path dir) throws Exception {
        ModelConfig cfg = ModelConfig.fromJson(llama());
        assertTrue(cfg.paddedVocab() == 128 && cfg.vocabSize() == 50);
        Transformer model = new Transformer(cfg, TestDevices.create());
        model.initialize(3);
        ModelStore.save(model, dir);
        try (var st = SafeTensors.open(dir.resolve("model.safetensors"))) {
            assertTrue(java.util.Arrays.equals(st.shape("model.embed_tokens.weight"), new int[] {50, 16}));
            assertTrue(java.util.Arrays.equals(st.shape("lm_head.weight"), new int[] {50, 16}));
        }
        Transformer back = ModelStore.load(dir, TestDevices.create());
        int[] batch = {1, 2, 3, 4, 5, 6, 7, 8, 9};
        assertTrue(model.loss(batch, 1, 8, null) == back.loss(batch, 1, 8, null), "reloaded model gives the identical loss");
    }
}
