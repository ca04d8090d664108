"""The PySpark wrappers against the Java stages on a real local Spark: Params mirrored, fit, transform on
inputs built every common way, and Pipeline / PipelineModel save and load through the Java side."""
import json
import os

import pytest
from conftest import TINY_TOKENIZER
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql import Row

import sparkatron
from sparkatron import SparkatronEstimator, SparkatronModel, TokenizeTransformer

TINY = {"model_type": "gpt2", "n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 32, "vocab_size": 320}
TEXTS = ["the cat sat on the mat", "the dog sat on the log", "a cat and a dog met", "the mat and the log",
         "on the mat the cat sat", "a dog on a log"]


def test_installed_package_is_what_runs():
    # the tests run against `pip install ./python`, not the source folder
    assert "site-packages" in sparkatron.__file__, sparkatron.__file__
    jars = sparkatron.jars()
    assert any("spark-plugin" in j for j in jars) and all(os.path.isfile(j) for j in jars), jars


@pytest.mark.parametrize("cls", [SparkatronEstimator, TokenizeTransformer])
def test_params_mirror_the_java_params(spark, cls):
    stage = cls()
    java = {p.name(): p for p in stage._java_obj.params()}
    python = {p.name: p for p in stage.params}
    assert sorted(java) == sorted(python)
    for name, jp in java.items():
        assert python[name].doc == jp.doc(), name
        if stage._java_obj.hasDefault(jp):
            assert stage.getOrDefault(name) == stage._java_obj.getOrDefault(jp), name


def fitted_pipeline(spark, tmp_path):
    df = spark.createDataFrame([(t, t.split(" ")[0]) for t in TEXTS], ["text", "prompt"])
    tok = TokenizeTransformer(inputCol="text", outputCol="tokens", tokenizer=TINY_TOKENIZER)
    est = SparkatronEstimator(modelConfig=json.dumps(TINY), dp=2, globalBatch=4, seqLen=8, steps=3, lr=1e-2,
                              seed=3, commTimeoutS=60)
    pipeline = Pipeline(stages=[tok, est])
    path = str(tmp_path / "pipeline")
    pipeline.save(path)
    loaded = Pipeline.load(path)
    assert [type(s) for s in loaded.getStages()] == [TokenizeTransformer, SparkatronEstimator]
    assert loaded.getStages()[1].getSteps() == 3 and loaded.getStages()[1].getDp() == 2
    return df, loaded.fit(df)


def test_fit_transform_and_pipeline_model_round_trip(spark, tmp_path):
    df, model = fitted_pipeline(spark, tmp_path)
    lm = model.stages[1]
    assert isinstance(lm, SparkatronModel)
    metrics = lm.trainingMetrics()
    assert [m["step"] for m in metrics] == [1, 2, 3] and all(m["loss"] > 0 for m in metrics)
    assert lm.getTokenizer().endswith("tokenizer.json"), "fit took the tokenizer from the column metadata"
    lm.setPromptCol("prompt").setMaxNewTokens(4).setTemperature(0.9).setTopK(10).setSampleSeed(5)
    before = model.transform(df).orderBy("text").collect()
    assert all(r.loss is not None and r.perplexity > 1 for r in before)
    assert all(isinstance(r.generatedText, str) for r in before)

    path = str(tmp_path / "fitted")
    model.save(path)
    loaded = PipelineModel.load(path)
    assert [type(s) for s in loaded.stages] == [TokenizeTransformer, SparkatronModel]
    assert loaded.stages[1].getTemperature() == 0.9 and loaded.stages[1].getPromptCol() == "prompt"
    after = loaded.transform(df).orderBy("text").collect()
    assert [r.loss for r in after] == [r.loss for r in before]
    assert [r.generatedText for r in after] == [r.generatedText for r in before]
    again = SparkatronModel.load(os.path.join(path, "stages", sorted(os.listdir(os.path.join(path, "stages")))[1]))
    assert again.uid == lm.uid


def test_transform_on_inputs_built_every_way(spark, tmp_path):
    df, model = fitted_pipeline(spark, tmp_path)
    lm = model.stages[1]
    tokenized = model.stages[0].transform(df).select("tokens")
    ids = [r.tokens for r in tokenized.collect()]
    want = sorted(r.loss for r in lm.transform(tokenized).collect())

    def losses(frame):
        return sorted(r.loss for r in lm.transform(frame).collect())

    schema = "tokens array<int>"
    assert losses(spark.createDataFrame([(i,) for i in ids], schema)) == want, "tuples of lists"
    assert losses(spark.createDataFrame([Row(tokens=i) for i in ids], schema)) == want, "Rows"
    assert losses(spark.createDataFrame([[i] for i in ids], schema)) == want, "lists"
    parquet = str(tmp_path / "tokens.parquet")
    spark.createDataFrame([(i,) for i in ids], schema).write.parquet(parquet)
    assert losses(spark.read.parquet(parquet)) == want, "Parquet"

    inferred = spark.createDataFrame([(i,) for i in ids], ["tokens"])  # Python ints infer as bigint
    with pytest.raises(Exception, match="expected array<int>"):
        lm.transform(inferred).collect()
    assert losses(inferred.selectExpr("cast(tokens as array<int>) as tokens")) == want


def test_bad_input_is_refused_with_a_clear_message(spark):
    df = spark.createDataFrame([("x",)], ["text"])
    with pytest.raises(Exception, match="set modelConfig"):
        SparkatronEstimator().fit(df)
    with pytest.raises(Exception, match="input column 'body' not found"):
        TokenizeTransformer(inputCol="body").transform(df)
