package org.sparkatron.spark;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.fasterxml.jackson.databind.ObjectMapper;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;
import org.sparkatron.precision.Precision;

/** The {@code precision} key of a training config (no Spark needed: parsing only). */
@Timeout(value = 30, unit = TimeUnit.SECONDS)
class PrecisionConfigTest {
    private static final String MODEL = "{\"model_type\":\"gpt2\",\"n_layer\":1,\"n_embd\":16,\"n_head\":2,\"n_positions\":8,\"vocab_size\":20}";

    static TrainConfig parse(String extra) throws Exception {
        return TrainConfig.fromJson(new ObjectMapper().readTree("{\"model\": " + MODEL + extra + "}"));
    }

    @Test
    void precisionDefaultsToFp32AndAcceptsBf16AndFp16() throws Exception {
        assertEquals(Precision.FP32, parse("").precision);
        assertEquals(Precision.BF16, parse(", \"precision\": \"bf16\"").precision);
        assertEquals(Precision.FP16, parse(", \"precision\": \"fp16\"").precision);
        IllegalArgumentException e = assertThrows(IllegalArgumentException.class, () -> parse(", \"precision\": \"int8\""));
        assertTrue(e.getMessage().contains("config key 'precision'") && e.getMessage().contains("int8"), e.getMessage());
    }
}
