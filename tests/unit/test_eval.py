"""Evaluation: answer extraction on realistic reasoning outputs per benchmark type, pass@k, the benchmark
readers on files in their publishers' layouts, and one line for each bad input."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from r1v.evaluation.readers import BenchmarkError
from r1v.evaluation.scoring import EvalItem, extract_choice, pass_at_k, prompt_text, score

CHOICES = ["12 cm", "15 cm", "blue", "\\frac{1}{2}"]
MC_CASES = [  # (completion, extracted letter)
    ("<think>\nThe side is 15.\n</think>\n\nThe perimeter is 15 cm.\nAnswer: \\boxed{B}", "B"),
    ("<think>maybe \\boxed{A}</think>\n\nAnswer: \\boxed{C}", "C"),  # a box inside the thought does not count
    ("...\n</think>\n\nAnswer: (D)", "D"),
    ("...</think>\n\\boxed{B. 15 cm}", "B"),
    ("...</think>\n\\boxed{(B)}", "B"),
    ("...</think>\nAnswer: \\boxed{\\text{C}}", "C"),
    ("...</think>\nAnswer: option C", "C"),
    ("...</think>\nThe answer is: 'blue'", "C"),  # quotes the option text
    ("...</think>\n\\boxed{Blue}", "C"),  # a word that starts with a letter is read as text
    ("...</think>\n\\boxed{0.5}", "D"),  # the option's value, math-equivalent
    ("...</think>\n\\boxed{15 cm}", "B"),
    ("...</think>\nfirst \\boxed{A}, then on reflection \\boxed{D}", "D"),  # several boxes: the last
    ("I ran out of tokens while thinking about A and B", None),  # never closed, no answer
    ("...</think>\n\\boxed{E}", None),  # not an option
]
OPEN_CASES = [  # (completion, reference, correct)
    ("...</think>\n\nAnswer: \\boxed{\\frac{3}{4}}", "0.75", True),
    ("...</think>\n\\boxed{3/4}", "\\frac{3}{4}", True),
    ("...</think>\nAnswer: \\boxed{12\\text{ cm}}", "12", True),  # units dropped
    ("...</think>\n\\boxed{x = 7}", "7", True),
    ("...</think>\n\\boxed{2\\sqrt{2}}", "\\sqrt{8}", True),
    ("...</think>\nAnswer: 1,000", "1000", True),
    ("...</think>\n\\boxed{\\pi r^2}", "\\pi r^2", True),
    ("<think>so \\boxed{5}</think>\n\n\\boxed{6}", "5", False),  # the final answer is after </think>
    ("...</think>\n\\boxed{5} and later \\boxed{6}", "6", True),
    ("the thought never closes and says 42", "42", False),
    ("...</think>\n\\boxed{red}", "Red", True),
    ("...</think>\n\\boxed{der}", "red", False),  # words never go to the symbolic parser
]


@pytest.mark.parametrize(("text", "letter"), MC_CASES)
def test_multiple_choice_extraction(text, letter):
    assert extract_choice(text, CHOICES) == letter
    item = EvalItem("q", "Which?", "C", "mc", CHOICES)
    assert score(item, text) == (letter == "C", letter)


@pytest.mark.parametrize(("text", "truth", "correct"), OPEN_CASES)
def test_open_answer_scoring(text, truth, correct):
    assert score(EvalItem("q", "?", truth), text)[0] is correct


def test_pass_at_k_unbiased():
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(1 - 3 / 10)  # 1 − C(3,2)/C(5,2)
    assert pass_at_k(5, 0, 5) == 0.0 and pass_at_k(5, 1, 5) == 1.0
    with pytest.raises(ValueError, match="pass@6 needs at least 6 samples"):
        pass_at_k(5, 1, 6)


def test_prompts_are_r1v_unified_or_plain():
    mc = EvalItem("q", "<image>\nWhich colour?", "A", "mc", ["red", "blue"])
    text = prompt_text(mc)
    assert text.startswith("<image>\nWhich colour?\nA. red\nB. blue\nAnswer the multiple choice preceding question.")
    assert "'Answer: \\boxed{$LETTER}'" in text
    assert "$FINAL_ANSWER" in prompt_text(EvalItem("q", "2+2?", "4"))
    assert prompt_text(EvalItem("q", "2+2?", "4", meta={"prompt": "plain"})) == "2+2?"
    assert prompt_text(EvalItem("q", "2+2?", "4", meta={"prompt": "plain"}), "r1v").endswith("step before answering.")


# -- readers ------------------------------------------------------------------------------------------
def png(color: str = "red") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="PNG")
    return buf.getvalue()


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)


def test_mmmu_layout_images_in_order_of_mention(registry, tmp_path):
    rows = [{"id": "validation_Art_Theory_1", "question": "Compare <image 2> with <image 1>. Which is older?",
             "options": "['<image 1>', '<image 2>']", "answer": "B", "question_type": "multiple-choice",
             "image_1": {"bytes": png("red"), "path": "a.png"}, "image_2": {"bytes": png("blue"), "path": "b.png"},
             "subfield": "Art History"},
            {"id": "validation_Math_2", "question": "What is 2+3?", "options": "[]", "answer": "5",
             "question_type": "open", "image_1": None, "image_2": None, "subfield": "Algebra"}]  # fmt: skip
    write_parquet(tmp_path / "Art_Theory" / "validation-00000-of-00001.parquet", rows)
    items = registry.build("benchmark", "mmmu", path=str(tmp_path))
    mc, op = items
    assert mc.kind == "mc" and mc.answer == "B" and mc.category == "Art_Theory"
    assert mc.question == "Compare <image> with <image>. Which is older?"
    assert [im.getpixel((0, 0)) for im in mc.images] == [(0, 0, 255), (255, 0, 0)]  # image 2 first, as mentioned
    assert mc.choices == ["(image 1)", "(image 2)"]  # later mentions refer back, no second copy
    assert op.kind == "open" and op.images == [] and op.category == "Math"


def test_mathvista_letters_paths_and_missing_image(registry, tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (8, 8), "green").save(tmp_path / "images" / "2.jpg")
    rows = [{"pid": "1", "question": "Which is largest?", "choices": ["3", "7", "5"], "answer": "7",
             "question_type": "multi_choice", "decoded_image": {"bytes": png(), "path": None}, "image": "images/1.jpg",
             "unit": None, "metadata": {"task": "figure question answering"}},
            {"pid": "2", "question": "Length?", "choices": None, "answer": "4.5", "question_type": "free_form",
             "decoded_image": None, "image": "images/2.jpg", "unit": "cm",
             "metadata": {"task": "geometry"}}]  # fmt: skip
    write_parquet(tmp_path / "data" / "testmini-00000-of-00001.parquet", rows)
    a, b = registry.build("benchmark", "mathvista", path=str(tmp_path))
    assert (a.kind, a.answer, a.choices, a.category) == ("mc", "B", ["3", "7", "5"], "figure question answering")
    assert b.kind == "open" and b.question.endswith("Length? (unit: cm)") and b.images[0].getpixel((0, 0))[1] > 100
    (tmp_path / "images" / "2.jpg").unlink()
    with pytest.raises(BenchmarkError) as e:
        registry.build("benchmark", "mathvista", path=str(tmp_path))
    assert "row 2 references image" in str(e.value) and "images/2.jpg, which does not exist" in str(e.value)


def test_text_benchmarks_and_gpqa_shuffle(registry, tmp_path):
    (tmp_path / "math").mkdir()
    (tmp_path / "math" / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "answer": "2", "subject": "Algebra",
                                                              "unique_id": "test/algebra/1.json"}) + "\n")  # fmt: skip
    (m,) = registry.build("benchmark", "math500", path=str(tmp_path / "math"))
    assert (m.id, m.answer, m.category, m.kind) == ("test/algebra/1.json", "2", "Algebra", "open")
    write_parquet(
        tmp_path / "aime" / "data" / "train-00000-of-00001.parquet",
        [{"id": 60, "problem": "Find n.", "solution": "...", "answer": "204", "url": "u", "year": "2024"}],
    )
    (a,) = registry.build("benchmark", "aime2024", path=str(tmp_path / "aime"))
    assert a.answer == "204" and a.id == "60"
    head = (
        "Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3,High-level domain,Record ID"
    )
    (tmp_path / "gpqa_diamond.csv").write_text(f"{head}\nWhich?,right,w1,w2,w3,Physics,rec1\n")
    (g,) = registry.build("benchmark", "gpqa_diamond", path=str(tmp_path / "gpqa_diamond.csv"))
    assert sorted(g.choices) == ["right", "w1", "w2", "w3"] and g.choices["ABCD".index(g.answer)] == "right"
    (g2,) = registry.build("benchmark", "gpqa_diamond", path=str(tmp_path / "gpqa_diamond.csv"))
    assert g2.choices == g.choices and g.category == "Physics"  # the same order every time


def test_missing_column_and_missing_copy_are_one_line(registry, tmp_path):
    (tmp_path / "test.jsonl").write_text(json.dumps({"problem": "1+1?", "solution": "2"}) + "\n")
    with pytest.raises(BenchmarkError) as e:
        registry.build("benchmark", "math500", path=str(tmp_path))
    assert f"{tmp_path / 'test.jsonl'} has no column 'answer' (columns: problem, solution)" in str(e.value)
    with pytest.raises(BenchmarkError, match="does not exist \\(expected HuggingFaceH4/MATH-500"):
        registry.build("benchmark", "math500", path=str(tmp_path / "nope"))
    with pytest.raises(BenchmarkError, match="set path=<local copy>"):
        registry.build("benchmark", "gpqa_diamond")


def test_llm_judge_fallback_always_and_bad_replies(fake_judge):
    from r1v.evaluation.endpoint import JudgeError
    from r1v.evaluation.judge import AnswerJudge

    item = EvalItem("q", "Which is larger?", "B", "mc", ["1", "2"])
    fake_judge.reply = lambda body: "The response says two.\nVerdict: correct"
    judge = AnswerJudge(fake_judge.url, "m")
    assert judge(item, "<think>hmm</think>\n\nIt is clearly two.", rule_correct=False) is True and judge.asked == 1
    prompt = fake_judge.bodies[-1]["messages"][0]["content"]
    assert "Reference answer: B. 2" in prompt and "It is clearly two." in prompt and "hmm" not in prompt
    assert judge(item, "\\boxed{B}", rule_correct=True) is True and judge.asked == 1  # fallback: not asked
    always = AnswerJudge(fake_judge.url, "m", mode="always")
    fake_judge.reply = lambda body: "Verdict: incorrect"
    assert always(item, "\\boxed{B}", rule_correct=True) is False
    fake_judge.reply = lambda body: "I cannot tell."  # no verdict: counted, the rule's verdict stands ...
    assert always(item, "x", rule_correct=False) is False and always(item, "\\boxed{B}", rule_correct=True) is True
    assert always.failures == 2
    with pytest.raises(JudgeError, match=r"no 'Verdict: correct\|incorrect' in its reply.*of 10 replies had none"):
        for _ in range(8):  # ... until most replies have none
            always(item, "x", rule_correct=False)
    with pytest.raises(JudgeError, match=r"judge\.mode 'sometimes' is not allowed"):
        AnswerJudge(fake_judge.url, "m", mode="sometimes")


def test_benchmark_images_are_shown_as_a_viewer_shows_them(tmp_path):
    """Benchmark images go through the training path's to_rgb: transparent pixels over white (not their hidden
    colour), EXIF orientation applied; from bytes and from a path alike."""
    from r1v.evaluation.readers import load_image

    rgba = Image.new("RGBA", (4, 2), (255, 0, 0, 0))  # fully transparent, hidden colour red
    buf = io.BytesIO()
    rgba.save(buf, "PNG")
    im = load_image({"bytes": buf.getvalue()}, tmp_path, "bench", "row 1")
    assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)
    turned = Image.new("RGB", (4, 2), (0, 0, 255))
    exif = turned.getexif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to view
    turned.save(tmp_path / "t.jpg", exif=exif)
    assert load_image("t.jpg", tmp_path, "bench", "row 2").size == (2, 4)
