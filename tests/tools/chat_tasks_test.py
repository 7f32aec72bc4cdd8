#!/usr/bin/env python3
"""tools/chat_tasks.py: generation, splits, checks, the judge, corruptions, Nectar output.

    python3 tests/tools/chat_tasks_test.py     (ctest: chat_tasks; about a second)
"""

import json
import math
import os
import random
import subprocess
import sys
import tempfile
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOL = os.path.join(ROOT, "tools", "chat_tasks.py")
sys.path.insert(0, os.path.join(ROOT, "tools"))
import chat_tasks as ct  # noqa: E402

N = 600


def rec(check, answer, task="t"):
    return {"messages": [{"role": "user", "content": "Q?"}], "task": task, "difficulty": "easy",
            "answer": answer, "check": check}


class Generation(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.splits = {s: ct.generate(s, N, 7) for s in ct.SPLITS}

    def test_the_same_seed_gives_the_same_bytes_and_another_seed_other_bytes(self):
        with tempfile.TemporaryDirectory() as d:
            outs = []
            for i, seed in enumerate([5, 5, 6]):
                path = os.path.join(d, f"{i}.jsonl")
                subprocess.run([sys.executable, TOOL, "generate", "--split", "rl", "--n", "200",
                                "--seed", str(seed), "--out", path], check=True)
                with open(path, "rb") as f:
                    outs.append(f.read())
        self.assertEqual(outs[0], outs[1])
        self.assertNotEqual(outs[0], outs[2])
        self.assertEqual(len(outs[0].splitlines()), 200)

    def test_splits_share_no_prompt_even_over_many_seeds(self):
        seen = {}
        for s in ct.SPLITS:
            for seed in range(3):
                for r in ct.generate(s, N, seed):
                    p = r["messages"][0]["content"]
                    self.assertEqual(seen.setdefault(p, s), s, f"{p!r} in {seen[p]} and {s}")

    def test_every_answer_passes_its_own_check_and_earns_reward_one(self):
        for s, records in self.splits.items():
            for r in records:
                answer = r["messages"][1]["content"]
                self.assertEqual(answer, r["answer"])
                self.assertEqual(r["check"], ct.CHECK[r["task"]])
                if r["check"] != "none":
                    self.assertTrue(ct.check(answer, r), r)
                    self.assertEqual(ct.true_reward(answer, r), 1.0)

    def test_answers_are_right(self):
        for r in self.splits["rl"]:
            p, a = r["messages"][0]["content"], r["answer"]
            nums = [int(x) for x in ct.INT_RE.findall(p)]
            if r["task"] == "add":
                self.assertEqual(int(a), nums[0] + nums[1], p)
            elif r["task"] == "mul":
                self.assertEqual(int(a), nums[0] * nums[1], p)
            elif r["task"] == "sub":
                x, y = (nums[1], nums[0]) if p.startswith("Subtract") else nums
                self.assertEqual(int(a), x - y, p)
            elif r["task"] == "sort":
                self.assertEqual([int(x) for x in a.split(", ")], sorted(nums), p)

    def test_splits_hold_their_difficulties_and_every_task(self):
        for s, records in self.splits.items():
            self.assertEqual({r["difficulty"] for r in records}, set(ct.SPLIT_MIX[s]), s)
            tasks = {r["task"] for r in records}
            want = set(ct.TASKS) - (set(ct.CHAT_TASKS) if s == "eval-hard" else set())
            self.assertEqual(tasks, want, s)

    def test_prompts_and_answers_are_short(self):
        for records in self.splits.values():
            for r in records:
                self.assertLessEqual(len(r["messages"][0]["content"]), 64, r)
                self.assertLessEqual(len(r["answer"]), 64, r)

    def test_no_answer_drops_only_the_assistant_message(self):
        a = ct.generate("eval", 50, 3)
        b = ct.generate("eval", 50, 3, with_answer=False)
        for x, y in zip(a, b):
            self.assertEqual(x["messages"][:1], y["messages"])
            self.assertEqual({k: v for k, v in x.items() if k != "messages"},
                             {k: v for k, v in y.items() if k != "messages"})

    def test_task_and_difficulty_filters(self):
        r = ct.generate("rl", 100, 1, tasks=["add", "sort"], difficulties=["hard"])
        self.assertEqual({x["task"] for x in r}, {"add", "sort"})
        self.assertEqual({x["difficulty"] for x in r}, {"hard"})
        with self.assertRaisesRegex(ValueError, "split sft has no hard"):
            ct.generate("sft", 1, 1, difficulties=["hard"])
        with self.assertRaisesRegex(ValueError, "unknown task"):
            ct.generate("sft", 1, 1, tasks=["divide"])


class Checks(unittest.TestCase):
    def test_integer_takes_the_first_signed_integer(self):
        r = rec("integer", "-22")
        for ok in ["-22", " -22.", "The answer is -22, yes 5", "-022", "x-22"]:
            self.assertTrue(ct.check(ok, r), ok)
        for bad in ["22", "- 22", "5 then -22", "", "minus twenty-two"]:
            self.assertFalse(ct.check(bad, r), bad)
        self.assertTrue(ct.check("-0", rec("integer", "0")))

    def test_text_strips_whitespace_and_one_trailing_period(self):
        r = rec("text", "domat")
        for ok in ["domat", " domat.\n", "domat."]:
            self.assertTrue(ct.check(ok, r), ok)
        for bad in ["Domat", "domat..", "'domat'", "domat!", "it is domat"]:
            self.assertFalse(ct.check(bad, r), bad)

    def test_list_reads_the_first_run(self):
        ints = rec("list", "3, 5, 12")
        for ok in ["3, 5, 12", "3 5 12.", "[3, 5, 12]", "Sorted: 3,5,12", "3, 5, 12 and 7x 9"]:
            self.assertTrue(ct.check(ok, ints), ok)
        for bad in ["3, 5", "3, 5, 12, 12", "3;5;12", "12, 5, 3", "none", "3, 5, 12 7"]:
            self.assertFalse(ct.check(bad, ints), bad)
        words = rec("list", "box, sun, cat")
        for ok in ["box, sun, cat", "box sun cat.", " box,sun , cat!"]:
            self.assertTrue(ct.check(ok, words), ok)
        for bad in ["The list: box, sun, cat", "box, sun", "Box, sun, cat"]:
            self.assertFalse(ct.check(bad, words), bad)

    def test_none_is_not_scored(self):
        r = rec("none", "Hello! How can I help you today?")
        self.assertFalse(ct.check(r["answer"], r))
        self.assertEqual(ct.true_reward(r["answer"], r), 0.0)

    def test_true_reward_grades_wrong_answers_by_relative_error(self):
        r = rec("integer", "200")
        self.assertEqual(ct.true_reward("200", r), 1.0)
        self.assertAlmostEqual(ct.true_reward("150", r), -0.25)
        self.assertEqual(ct.true_reward("201", r), -0.01)  # floor: wrong is never near 0
        self.assertEqual(ct.true_reward("9999", r), -1.0)
        self.assertEqual(ct.true_reward("no idea", r), -1.0)
        self.assertAlmostEqual(ct.true_reward("domta", rec("text", "domat")), -0.4)
        self.assertAlmostEqual(ct.true_reward("3, 12", rec("list", "3, 5, 12")), -1 / 3)
        self.assertEqual(ct.true_reward("", rec("list", "3, 5, 12")), -1.0)


class JudgeAndCorruptions(unittest.TestCase):
    def test_corruptions_fail_the_check_and_reformats_pass_it(self):
        rng = random.Random(11)
        for s in ("sft", "eval-hard"):
            for r in ct.generate(s, 300, 2):
                if r["check"] == "none":
                    self.assertNotEqual(ct.corrupt(r["answer"], r, rng), r["answer"])
                    continue
                for _ in range(5):
                    x = ct.corrupt(r["answer"], r, rng)
                    self.assertFalse(ct.check(x, r), (x, r))
                    self.assertTrue(x.strip())
                    self.assertLess(ct.true_reward(x, r), 0)
                f = ct.reformat(r["answer"], r, rng)
                self.assertTrue(ct.check(f, r), (f, r))
                self.assertNotEqual(f.strip(), r["answer"])

    def test_the_judge_ranks_right_then_by_error_then_format_then_length(self):
        r = rec("integer", "579")
        answers = ["600", "The answer is 579.", "579", "580", "The answer is 580.", "nothing",
                   "1000", "579 579 579"]
        ranks = ct.rank(r, answers)
        by_rank = [a for _, a in sorted(zip(ranks, answers))]
        self.assertEqual(by_rank, ["579", "The answer is 579.", "579 579 579", "580",
                                   "The answer is 580.", "600", "1000", "nothing"])
        t = rec("text", "domat")
        by_rank = [a for _, a in sorted(zip(ct.rank(t, ["tamod", "domta", "domat."]),
                                            ["tamod", "domta", "domat."]))]
        self.assertEqual(by_rank, ["domat.", "domta", "tamod"])

    def test_ties_keep_input_order_and_ranks_are_a_permutation(self):
        r = rec("integer", "5")
        self.assertEqual(ct.rank(r, ["4", "6", "5", "5"]), [3, 4, 1, 2])
        rng = random.Random(4)
        for rr in ct.generate("rl", 200, 9):
            answers = [a for a, _ in ct.make_candidates(rr, 7, rng)]
            ranks = ct.rank(rr, answers)
            self.assertEqual(sorted(ranks), list(range(1, 8)))
            if rr["check"] != "none":
                self.assertEqual(answers[ranks.index(1)], rr["answer"])

    def test_chit_chat_prefers_well_formed_unrepeated_answers_of_the_reference_length(self):
        r = rec("none", "Hello! How can I help you today?")
        answers = ["hello how can i help", "Hello! How how how can I help you today?",
                   "Hello! How can I help you today?", "",
                   "Hi! What can I do for you today, friend?"]
        by_rank = [a for _, a in sorted(zip(ct.rank(r, answers), answers))]
        self.assertEqual(by_rank, ["Hello! How can I help you today?",
                                   "Hi! What can I do for you today, friend?",
                                   "hello how can i help",
                                   "Hello! How how how can I help you today?", ""])


class Golden(unittest.TestCase):
    def test_the_committed_golden_cases_are_this_codes(self):
        path = os.path.join(ROOT, "tests", "data", "tasks", "golden.jsonl")
        with open(path) as f:
            committed = [json.loads(x) for x in f]
        self.assertEqual(committed, json.loads(json.dumps(ct.golden_cases())),
                         "regenerate: python3 tools/chat_tasks.py golden --out " + path)


class CommandLine(unittest.TestCase):
    def run_tool(self, *args):
        return subprocess.run([sys.executable, TOOL] + list(args), capture_output=True, text=True)

    def test_candidates_then_rank_write_nectar_records(self):
        with tempfile.TemporaryDirectory() as d:
            tasks, cands, nectar = (os.path.join(d, x) for x in ("t.jsonl", "c.jsonl", "n.jsonl"))
            for args in (["generate", "--split", "eval", "--n", "40", "--out", tasks],
                         ["candidates", "--data", tasks, "--k", "7", "--out", cands],
                         ["rank", "--data", cands, "--out", nectar]):
                p = self.run_tool(*args)
                self.assertEqual(p.returncode, 0, p.stderr)
            with open(nectar) as f:
                lines = [json.loads(x) for x in f]
            with open(tasks) as f:
                records = [json.loads(x) for x in f]
        self.assertEqual(len(lines), 40)
        for n, r in zip(lines, records):
            self.assertEqual(n["prompt"], "\n\nHuman: " + r["messages"][0]["content"] +
                             "\n\nAssistant: ")
            self.assertEqual([a["rank"] for a in n["answers"]], list(range(1, 8)))
            self.assertTrue(all(a["answer"].strip() for a in n["answers"]))
            self.assertEqual((n["task"], n["difficulty"], n["reference"]),
                             (r["task"], r["difficulty"], r["answer"]))
            if r["check"] != "none":
                self.assertEqual(n["answers"][0], {"answer": r["answer"], "rank": 1,
                                                   "model": "reference"})

    def test_rank_drops_blank_answers_and_skips_records_left_with_one(self):
        r = rec("integer", "5")
        with tempfile.TemporaryDirectory() as d:
            path, out = os.path.join(d, "c.jsonl"), os.path.join(d, "n.jsonl")
            with open(path, "w") as f:
                f.write(json.dumps({"record": r, "answers": ["4", " ", "5", "5"]}) + "\n\n")
                f.write(json.dumps({"record": r, "answers": ["4", ""]}) + "\n")
            p = self.run_tool("rank", "--data", path, "--out", out, "--unique")
            self.assertEqual(p.returncode, 0, p.stderr)
            self.assertIn("1 records written, 1 skipped", p.stderr)
            self.assertIn("2 blank and 1 repeated", p.stderr)
            with open(out) as f:
                lines = [json.loads(x) for x in f]
        self.assertEqual(lines[0]["answers"], [{"answer": "5", "rank": 1},
                                               {"answer": "4", "rank": 2}])

    def test_bad_input_names_file_and_line(self):
        good = json.dumps({"record": rec("integer", "5"), "answers": ["4", "5"]})
        cases = [("{not json", ":2: not JSON"),
                 (json.dumps({"record": rec("maybe", "5"), "answers": ["4", "5"]}),
                  ':2: record: unknown check rule "maybe"'),
                 (json.dumps({"record": rec("integer", "5"), "answers": "45"}),
                  ':2: "answers" must be a list of strings'),
                 (json.dumps({"record": {"messages": []}, "answers": ["4"]}),
                  ':2: record: "messages" must be')]
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "bad.jsonl")
            for line, message in cases:
                with open(path, "w") as f:
                    f.write(good + "\n" + line + "\n")
                p = self.run_tool("rank", "--data", path, "--out", os.path.join(d, "o"))
                self.assertEqual(p.returncode, 1)
                self.assertIn(path + message, p.stderr)
            p = self.run_tool("candidates", "--data", os.path.join(d, "missing.jsonl"))
            self.assertEqual(p.returncode, 1)
            self.assertIn("missing.jsonl: No such file", p.stderr)


if __name__ == "__main__":
    unittest.main()
