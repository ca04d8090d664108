package org.sparkatron.cli;

import static org.junit.jupiter.api.Assertions.assertArrayEquals;
import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;
import org.sparkatron.checkpoint.ExportCommand;
import org.sparkatron.checkpoint.HfCheckpoint;
import org.sparkatron.checkpoint.ModelStore;
import org.sparkatron.device.cpu.CpuDevice;
import org.sparkatron.model.Transformer;

/**
 * Issue 22, finding 5, through the commands as a careless user runs them: every config value is
 * type- and range-checked in {@code init} (unknown and duplicate keys, strings for numbers, a negative
 * RoPE base, sizes whose products overflow 32 bits), a model with NaN weights is refused by
 * {@code score} naming the tensor, a binary token file is refused naming the file, {@code train-local}
 * will not write over its input model, {@code export --step -1} is refused, and an option given twice is
 * refused instead of the last one winning. Each was accepted (or crashed without the file's name) before.
 */
class CarelessInputCliTest {
    private static final String TINY = "\"model_type\": \"llama\", \"num_hidden_layers\": 1, \"hidden_size\": 16, "
            + "\"num_attention_heads\": 2, \"intermediate_size\": 24, \"vocab_size\": 30, \"max_position_embeddings\": 8";

    private static SparkatronCliTest.Result init(Path dir, String configBody) throws Exception {
        Path cfg = dir.resolve("config-" + Integer.toHexString(configBody.hashCode()) + ".json");
        Files.writeString(cfg, "{" + configBody + "}");
        return SparkatronCliTest.run("init", "--config", cfg.toString(), "--seed", "1", "--out", dir.resolve("m").toString());
    }

    private static void refusedInit(Path dir, String body, String... fragments) throws Exception {
        SparkatronCliTest.Result r = init(dir, body);
        assertEquals(2, r.status(), "init accepted {" + body + "}: " + r.out());
        for (String f : fragments) {
            assertTrue(r.err().contains(f), "'" + r.err().strip() + "' should contain '" + f + "'");
        }
        assertEquals(1, r.err().strip().lines().count(), "one line: " + r.err());
    }

    @Test
    void initChecksEveryValue(@TempDir Path dir) throws Exception {
        assertEquals(0, init(dir, TINY).status());
        refusedInit(dir, TINY + ", \"num_hidden_layer\": 3", "unknown key 'num_hidden_layer'", "did you mean 'num_hidden_layers'");
        refusedInit(dir, TINY + ", \"vocab_size\": 31", "duplicate key 'vocab_size'", "line 1");
        refusedInit(dir, TINY + ", \"rms_norm_eps\": \"x\"", "'rms_norm_eps'", "\"x\"");
        refusedInit(dir, TINY + ", \"rope_theta\": -1", "'rope_theta'", "-1");
        refusedInit(dir, TINY + ", \"tie_word_embeddings\": \"yes\"", "'tie_word_embeddings'", "true or false");
        refusedInit(dir, "\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 16, \"n_head\": 2, \"n_positions\": 8, "
                + "\"vocab_size\": 30, \"layer_norm_epsilon\": \"x\"", "'layer_norm_epsilon'", "\"x\"");
        // 4 x n_embd overflowed 32 bits into "MLP hidden size must be positive, got -4"
        refusedInit(dir, "\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 2147483647, \"n_head\": 1, \"n_positions\": 8, "
                + "\"vocab_size\": 30", "4 x n_embd = 8589934588", "32 bits");
        // a real GPT-2 medium config.json (transformers 4.12) loads: its extra keys are Hugging Face's own
        assertEquals(0, init(dir, "\"activation_function\": \"gelu_new\", \"architectures\": [\"GPT2LMHeadModel\"], "
                + "\"attn_pdrop\": 0.1, \"bos_token_id\": 50256, \"embd_pdrop\": 0.1, \"eos_token_id\": 50256, "
                + "\"initializer_range\": 0.02, \"layer_norm_epsilon\": 1e-05, \"model_type\": \"gpt2\", \"n_ctx\": 16, "
                + "\"n_embd\": 16, \"n_head\": 2, \"n_inner\": null, \"n_layer\": 1, \"n_positions\": 16, \"n_special\": 0, "
                + "\"predict_special_tokens\": true, \"reorder_and_upcast_attn\": false, \"resid_pdrop\": 0.1, "
                + "\"scale_attn_by_inverse_layer_idx\": false, \"scale_attn_weights\": true, \"summary_activation\": null, "
                + "\"summary_first_dropout\": 0.1, \"summary_proj_to_labels\": true, \"summary_type\": \"cls_index\", "
                + "\"summary_use_proj\": true, \"task_specific_params\": {\"text-generation\": {\"do_sample\": true, "
                + "\"max_length\": 50}}, \"transformers_version\": \"4.12.5\", \"use_cache\": true, \"vocab_size\": 30").status());
        refusedInit(dir, "\"model_type\": \"gpt2\", \"n_layer\": 1, \"n_embd\": 16, \"hidden_size\": 32, \"n_head\": 2, "
                + "\"n_positions\": 8, \"vocab_size\": 30", "'hidden_size' (32) and 'n_embd' (16) disagree");
        // Hugging Face's own keys (hub metadata, generation settings, dropout) are not typos
        assertEquals(0, init(dir, TINY + ", \"architectures\": [\"LlamaForCausalLM\"], \"torch_dtype\": \"float32\", "
                + "\"bos_token_id\": 1, \"attention_dropout\": 0.0, \"transformers_version\": \"4.44.0\"").status());
    }

    @Test
    void nonFiniteModelsAndBinaryTokenFilesAreRefusedNamingTheFile(@TempDir Path dir) throws Exception {
        assertEquals(0, init(dir, TINY).status());
        Path tokens = dir.resolve("tokens.txt");
        Files.writeString(tokens, "1 2 3 4 5\n6 7 8 9 10\n");
        assertEquals(0, SparkatronCliTest.run("score", "--model", dir.resolve("m").toString(), "--tokens", tokens.toString(),
                "--threads", "1").status());

        Transformer m = ModelStore.load(dir.resolve("m"), new CpuDevice());
        float[] weights = m.params().downloadWeights();
        weights[5] = Float.NaN;
        m.params().uploadWeights(weights);
        HfCheckpoint.save(dir.resolve("m/" + ModelStore.WEIGHTS), m.config(), m.params());
        SparkatronCliTest.Result nan = SparkatronCliTest.run("score", "--model", dir.resolve("m").toString(), "--tokens",
                tokens.toString(), "--threads", "1");
        assertEquals(2, nan.status(), "a NaN model was scored: " + nan.out());
        assertTrue(nan.err().contains(ModelStore.WEIGHTS) && nan.err().contains("non-finite") && nan.err().contains("'"), nan.err());
        assertTrue(!nan.out().contains("NaN"), nan.out());

        // finite weights whose activations overflow: the loss is not finite, so nothing is printed and the status is 1
        for (int i = 0; i < weights.length; i++) {
            weights[i] = (i % 7 - 3) * 1e18f; // squares still fit a float (norms pass), products of two do not
        }
        m.params().uploadWeights(weights);
        HfCheckpoint.save(dir.resolve("m/" + ModelStore.WEIGHTS), m.config(), m.params());
        SparkatronCliTest.Result overflow = SparkatronCliTest.run("score", "--model", dir.resolve("m").toString(), "--tokens",
                tokens.toString(), "--threads", "1");
        assertEquals(1, overflow.status(), "an overflowing model was scored: " + overflow.out() + overflow.err());
        assertTrue(overflow.err().contains("not finite") && overflow.out().isBlank(), overflow.out() + overflow.err());

        Path binary = dir.resolve("tokens.bin");
        byte[] b = new byte[256];
        for (int i = 0; i < b.length; i++) {
            b[i] = (byte) (0x80 + i % 64);
        }
        Files.write(binary, b);
        assertEquals(0, init(dir, TINY).status()); // a good model again
        SparkatronCliTest.Result bin = SparkatronCliTest.run("score", "--model", dir.resolve("m").toString(), "--tokens",
                binary.toString(), "--threads", "1");
        assertEquals(2, bin.status());
        assertTrue(bin.err().contains(binary.toString()) && bin.err().contains("is not UTF-8 text"), bin.err());
        SparkatronCliTest.Result folder = SparkatronCliTest.run("score", "--model", dir.resolve("m").toString(), "--tokens",
                dir.toString(), "--threads", "1");
        assertEquals(2, folder.status());
        assertTrue(folder.err().contains(dir.toString()) && folder.err().contains("is a directory"), folder.err());
    }

    @Test
    void trainLocalDoesNotOverwriteItsInputModel(@TempDir Path dir) throws Exception {
        assertEquals(0, init(dir, TINY).status());
        Path tokens = dir.resolve("tokens.txt");
        List<String> lines = new ArrayList<>();
        for (int i = 0; i < 8; i++) {
            lines.add(i + " " + (i + 1) + " " + (i + 2) + " " + (i + 3));
        }
        Files.write(tokens, lines);
        byte[] before = Files.readAllBytes(dir.resolve("m/" + ModelStore.WEIGHTS));
        for (String out : new String[] {dir.resolve("m").toString(), dir.resolve("m/.").toString(), dir.resolve("x/../m").toString()}) {
            SparkatronCliTest.Result r = SparkatronCliTest.run("train-local", "--model", dir.resolve("m").toString(), "--tokens",
                    tokens.toString(), "--steps", "2", "--batch", "2", "--threads", "1", "--out", out);
            assertEquals(2, r.status(), "--out " + out + " == --model was accepted");
            assertTrue(r.err().contains("--model directory"), r.err());
        }
        assertArrayEquals(before, Files.readAllBytes(dir.resolve("m/" + ModelStore.WEIGHTS)), "the input model is untouched");
        SparkatronCliTest.Result twice = SparkatronCliTest.run("train-local", "--model", dir.resolve("m").toString(), "--tokens",
                tokens.toString(), "--steps", "2", "--steps", "3", "--out", dir.resolve("m2").toString());
        assertEquals(2, twice.status());
        assertTrue(twice.err().contains("--steps is given twice"), twice.err());
    }

    @Test
    void exportRefusesANegativeStep(@TempDir Path dir) {
        for (String step : new String[] {"-1", "x"}) {
            IllegalArgumentException e = org.junit.jupiter.api.Assertions.assertThrows(IllegalArgumentException.class,
                    () -> ExportCommand.run(new String[] {"export", "--checkpoint", dir.toString(), "--out",
                        dir.resolve("hf").toString(), "--step", step}, System.out));
            assertTrue(e.getMessage().contains("--step"), e.getMessage());
        }
    }
}
