package org.sparkatron.train;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.fasterxml.jackson.databind.ObjectMapper;
import org.junit.jupiter.api.Test;
import org.sparkatron.device.TestDevices;
import org.sparkatron.model.ModelConfig;
import org.sparkatron.model.ParameterSet;
import org.sparkatron.model.Transformer;

/**
 * Parameter counts against Hugging Face's published figures (GPT-2 small: 124,439,808; TinyLlama-1.1B:
 * 1,100,048,384) and against the parameters a built model declares; the FLOPs formula against its
 * statement in docs/benchmarks.md.
 */
class ModelFlopsTest {
    private static ModelConfig config(String json) throws Exception {
        return ModelConfig.fromJson(new ObjectMapper().readTree(json));
    }

    static ModelConfig gpt2Small() throws Exception {
        return config("{\"model_type\":\"gpt2\",\"n_layer\":12,\"n_embd\":768,\"n_head\":12,\"n_positions\":1024,\"vocab_size\":50257}");
    }

    @Test
    void parameterCountsMatchHuggingFace() throws Exception {
        assertEquals(124_439_808L, ModelFlops.parameters(gpt2Small()));
        ModelConfig tinyLlama = config("{\"model_type\":\"llama\",\"num_hidden_layers\":22,\"hidden_size\":2048,"
                + "\"num_attention_heads\":32,\"num_key_value_heads\":4,\"intermediate_size\":5632,\"vocab_size\":32000,"
                + "\"max_position_embeddings\":2048,\"tie_word_embeddings\":false}");
        assertEquals(1_100_048_384L, ModelFlops.parameters(tinyLlama));
    }

    @Test
    void parameterCountEqualsWhatAModelDeclares() throws Exception {
        for (String json : new String[] {
            "{\"model_type\":\"gpt2\",\"n_layer\":2,\"n_embd\":32,\"n_head\":2,\"n_positions\":32,\"vocab_size\":100}",
            "{\"model_type\":\"llama\",\"num_hidden_layers\":2,\"hidden_size\":32,\"num_attention_heads\":4,\"num_key_value_heads\":2,"
                + "\"intermediate_size\":48,\"vocab_size\":70,\"max_position_embeddings\":16,\"tie_word_embeddings\":false}"}) {
            ModelConfig c = config(json);
            Transformer t = new Transformer(c, TestDevices.create());
            long declared = 0;
            for (ParameterSet.Param p : t.params().params()) { // vocabulary rows as saved, without padding
                boolean vocabRows = p.name().equals("embed") || p.name().equals("head");
                declared += vocabRows ? p.numel() / p.shape()[0] * c.vocabSize() : p.numel();
            }
            assertEquals(declared, ModelFlops.parameters(c), json);
        }
    }

    @Test
    void flopsFollowTheStatedFormula() throws Exception {
        ModelConfig c = gpt2Small();
        double n = 124_439_808.0;
        assertEquals(6 * n + 6 * 12 * 1024 * 768.0, ModelFlops.perToken(c, 1024), 0);
        assertEquals((6 * n + 6 * 12 * 512 * 768.0) * 512 * 8, ModelFlops.perStep(c, 512, 8), 0);
    }
}
