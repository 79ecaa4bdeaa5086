"""Math answers: pull the final answer out of a model's text, and decide whether two answers are equal.

    extract_answer("... so the total is 12. The answer is $\\frac{3}{4}$.")  -> "\\frac{3}{4}"
    equivalent("0.75", "\\frac{3}{4}")  -> True        # pred first, reference second
    majority_vote(["12", "12.0", "13", None])  -> Vote(answer="12", votes=2, share=0.5, ...)
    reference_answer("Natalia sold 24 clips... \\n#### 72")  -> "72"   # a raw reference, read as an answer

extract_answer looks, in this order, for the last \\boxed{...} (nested braces); GSM8K's last
"#### 72"; the last "the answer is" / "answer:" / "答案是" / "答案为" phrase (a remark in brackets after
it is dropped); the last multiple-choice letter ("(B)", "option B", "选B"); the last number.
reference_answer keeps a bare answer as it is and sends a worked solution (a newline, "####", a
\\boxed inside prose, an "answer is" phrase, more than 3 words, over MAX_SYMPY_CHARS) through
extract_answer; equivalent() applies it to both sides, so a raw GSM8K or MATH solution given as the
reference compares by its final answer (before, one over 200 characters never reached sympy).

equivalent first reads both sides into our own canonical values, which cover what math-verify
(used directly) misses or gets wrong on our graded table (tests/unit/data/math_equivalence.jsonl):

    numbers      1,234,567 · 0.75 · 3/4 · \\frac34 · 1\\frac{1}{2} · 2.5e-3 · 3 \\times 10^{5} · -7
    repeating    0.\\overline{3} = 1/3 · 0.1\\overline{6} = 1/6 (math-verify reads 0.\\overline{3} as 0)
    percentages  50% = 50 = 0.5 (a percentage equals its number and its fraction of 1)
    units        5 cm · 5\\text{ cm} · $5 · ¥5 · 5元 · 5 apples -> 5 (units are dropped, not converted)
    words        seven · twenty-one · one hundred and five · 二十一 · 一百零五 · 三分之二 · 百分之五十
    infinity     \\infty · ∞ · inf · infinity · 无穷大, with a sign: +\\infty · -\\infty · negative/minus infinity
    collections  intervals (1, 3] · [2, \\infty), sets \\{1, 2\\} (order-free), tuples, bare lists "1, 2"
    letters      B · (B) · B) · B. · (B) 5 · \\text{(B)} · Answer: B · option B · 选B  (multiple choice)

When both sides are plain numbers the canonical comparison decides (exact for rationals, relative
1e-9 otherwise, and a rounded decimal of >= 2 places equals a non-terminating value it rounds from).
Anything else (\\sqrt{2}/2 vs 1/\\sqrt{2}, expressions, equations) goes to math-verify:
verify(parse(gold), parse(pred)), gold first, each side tried raw and wrapped in $...$.

Time: math-verify's own timeouts use signal.alarm, which works only on the main thread (it raises
elsewhere: thread pools, threaded actors). On the main thread we pass MV_TIMEOUT_S; off it we pass
None and bound time ourselves: inputs longer than MAX_SYMPY_CHARS, exponents of 4+ digits and
factorials of 3+ digits never reach sympy (they are what makes it hang), and such pairs are unequal
unless their normalized strings match.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from dataclasses import dataclass, field
from fractions import Fraction

MV_TIMEOUT_S = 3  # seconds per math-verify parse/compare, main thread only
MAX_SYMPY_CHARS = 200  # longer answers are compared as strings only

# ---- extraction --------------------------------------------------------------------------------

NUMBER = r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?(?:\s*/\s*\d+(?:\.\d+)?)?(?:[eE][-+]?\d+)?|-?\.\d+"
_NUMBER_RE = re.compile(rf"(?<![\w.])(?:{NUMBER})(?:\s*(?:\\?%|percent))?")
_ANCHOR_RE = re.compile(
    r"\banswer\s*(?:(?:is|would\s+be|will\s+be|should\s+be|equals)\s*[:：=]?|[:：=])\s*"
    r"|答案\s*(?:(?:是|为|應該是|应该是|應為|应为)\s*[:：=]?|[:：=])\s*",
    re.I,
)
_LETTER_RE = re.compile(
    r"(?:\b(?:option|choice)\s*\(?([A-E])\)?(?![\w])|\(([A-E])\)|选(?:项)?\s*\(?([A-E])\)?|(?<![\w])([A-E])\)(?!\w))"
)
_SENTENCE_END = re.compile(r"(?:\.(?=\s|$)|。|\n|;|；|!|！|\?|？)")
_HASHES_RE = re.compile(r"####[ \t]*([^\n]*\S)")  # GSM8K's final-answer line


def extract_answer(text: str | None) -> str | None:
    """The final answer a response gives, as a short string; None when it gives none."""
    if not text or not text.strip():
        return None
    boxed = last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    hashes = _HASHES_RE.findall(text)
    if hashes:  # GSM8K: the solution's last line is "#### 72"
        return hashes[-1].strip().rstrip(".。").strip()
    anchored = _anchored(text)
    if anchored:
        return anchored
    letters = list(_LETTER_RE.finditer(text))
    if letters:
        return next(g for g in letters[-1].groups() if g)
    numbers = list(_NUMBER_RE.finditer(text))
    if numbers:
        return numbers[-1].group(0).strip()
    return None


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} or \\fbox{...} (balanced braces), else None."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        m = re.match(r"\\(?:boxed|fbox)\s+(\S+)", text[start:])  # \boxed 5
        return m.group(1) if m else None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1 : j]
    return text[i + 1 :]  # unclosed: the rest


def _anchored(text: str) -> str | None:
    matches = list(_ANCHOR_RE.finditer(text))
    for m in reversed(matches):
        rest = text[m.end() :]
        close = rest.find("$", 1) if rest.startswith("$") else -1
        if close > 0:  # "$...$" keeps its inner dots and commas
            phrase = rest[1:close]
        else:  # (a lone "$" is a currency sign)
            end = _SENTENCE_END.search(rest)
            phrase = rest[: end.start()] if end else rest
        phrase = phrase.strip().strip("*").strip().rstrip(",，:：").strip()
        if "=" in phrase and "\\" not in phrase:  # "3 + 4 = 7" -> "7" (a worked sum, not an equation)
            phrase = phrase.rsplit("=", 1)[1].strip()
        if not phrase or phrase[-1] in "+-*/×÷":  # cut off mid-expression: no answer here
            continue
        if len(phrase.split()) > 4 or (len(phrase) > 12 and _CJK.search(phrase)):
            # "27 (a 35% discount would give 26: ...)" -> 27: a remark in brackets is not the answer
            bare = re.sub(r"\s*[(（][^()（）]*[)）]", " ", phrase).strip().rstrip(",，:：").strip()
            if bare and bare != phrase and len(bare.split()) <= 4 and not _CJK.search(bare):
                return bare
            # "that John has 5 apples left" -> the last number in it, else the phrase as said
            nums = list(_NUMBER_RE.finditer(bare)) or list(_NUMBER_RE.finditer(phrase))
            if nums:
                return nums[-1].group(0).strip()
        return phrase
    return None


def reference_answer(text: str | None) -> str | None:
    """The final answer a reference states, read the way a candidate's is: a bare answer ("72",
    "\\frac{3}{4}", "(A)", "negative infinity") as it is; a worked solution (a GSM8K one ending
    "#### 72", a MATH one with its answer in the last \\boxed{}, "... The answer is 7.") through
    extract_answer. None when nothing usable is left (empty, or a solution that states no answer)."""
    if text is None or not str(text).strip():
        return None
    s = str(text).strip()
    return s if _bare_answer(s) else extract_answer(s)


_PROSE_WORD = re.compile(r"(?<![\\a-zA-Z])[a-zA-Z]{2,}")  # a word that is not a LaTeX command
_MID_SENTENCE_END = re.compile(r"\.\s+\S|[。！？!?]\s*\S")  # a sentence ends and another starts


def _bare_answer(s: str) -> bool:
    """True when s is just an answer (nothing to extract), False for a worked solution."""
    if "####" in s or "\n" in s or len(s) > MAX_SYMPY_CHARS:
        return False
    if number(s) is not None or letter(s) is not None:
        return True
    if re.search(r"\\(?:boxed|fbox)", s) and not normalize(s).startswith(("\\boxed", "\\fbox")):
        return False  # "so x = \\boxed{5}": the boxed part is the answer
    if _ANCHOR_RE.search(s) or _MID_SENTENCE_END.search(s):
        return False  # "The answer is 7", "3 + 4 = 7. So 7."
    plain = _UNIT_WRAP.sub(" ", s)  # "5\\text{ apples}": words in \\text{} are units, not prose
    return len(_PROSE_WORD.findall(plain)) <= 3


# ---- canonical values --------------------------------------------------------------------------

_CJK = re.compile(r"[\u4e00-\u9fff]")


def normalize(s: str) -> str:
    """Surface noise off: $ and \\( \\) wrappers, \\boxed, \\left/\\right, spacing commands, \\dfrac,
    a leading "x =", a trailing period; full-width characters folded (NFKC)."""
    s = unicodedata.normalize("NFKC", str(s)).strip()
    for _ in range(3):
        s = s.strip()
        inner = last_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else None
        if inner is not None:
            s = inner
        for a, b in (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) > len(a) + len(b) - 1 and s.startswith(a) and s.endswith(b):
                s = s[len(a) : len(s) - len(b)]
        s = s.strip().rstrip(".。").strip()
    s = re.sub(r"\\(?:left|right|displaystyle|!|,|;|:|quad|qquad)", " ", s)
    s = re.sub(r"\\[dt]frac", r"\\frac", s).replace("~", " ")
    s = re.sub(r"^\s*[a-zA-Z]\s*=\s*(?!=)", "", s)  # "x = 3" -> "3"
    return re.sub(r"\s+", " ", s).strip()


_UNIT_WRAP = re.compile(r"\\(?:text|mathrm|textbf|mbox|operatorname)\s*\{([^{}]*)\}")
_CURRENCY = re.compile(r"^(?:\\\$|\$|¥|￥|€|£|USD|RMB|US\$)\s*")
_TRAILING_UNIT = re.compile(r"(?<=[\d%}.])\s*(?:\^\s*\{?\d\}?)?\s*[A-Za-z\u4e00-\u9fff°'\"/.\s]*$")


def strip_units(s: str) -> str:
    """'5\\text{ cm}' / '$5' / '5元' / '5 apples' / '90°' -> the number part."""
    s = _UNIT_WRAP.sub(lambda m: " " + m.group(1), s)
    s = _CURRENCY.sub("", s.strip())
    head = re.match(r"^(-?[\d,.\s/]+(?:[eE][-+]?\d+)?\s*(?:\\?%)?)", s)
    if head and _TRAILING_UNIT.fullmatch(s[head.end() :] or "") is None and s[head.end() :].strip():
        # the rest is not unit-like (an operator, a variable expression): keep everything
        return s
    return head.group(1).strip() if head else s


@dataclass(frozen=True)
class Num:
    value: Fraction | float  # Fraction when exact, float for infinity and 1e-300-style values
    percent: bool = False  # written with %: equals both value and value/100
    decimals: int | None = None  # digits after the point when written as a decimal


def number(s: str) -> Num | None:
    """A canonical number for a whole answer string, or None if it is not (just) a number."""
    s = normalize(s)
    if not s or len(s) > 80:
        return None
    inf = _infinity(s)
    if inf is not None:
        return Num(inf)
    zh = _chinese_number(s)
    if zh is not None:
        return zh
    words = _english_number(s)
    if words is not None:
        return Num(Fraction(words))
    s = strip_units(s)
    percent = False
    m = re.fullmatch(r"(.*?)\s*(?:\\%|%|percent|per cent)", s)
    if m:
        s, percent = m.group(1).strip(), True
    plain = _plain_number(s)
    if plain is None:
        return None
    value, decimals = plain
    return Num(value, percent, decimals)


_REPEATING = re.compile(r"(-?)(\d*)\.(\d*)\s*\\(?:overline|bar)\s*(?:\{\s*(\d+)\s*\}|(\d))")


def _repeating(s: str) -> Fraction | None:
    """'0.\\overline{3}' -> 1/3, '0.1\\overline{6}' -> 1/6, '-1.\\overline{09}' -> -12/11: the
    fraction a repeating decimal denotes. (math-verify reads 0.\\overline{3} as 0.)"""
    m = _REPEATING.fullmatch(s)
    if not m:
        return None
    sign, whole, fixed, cycle = m.group(1), m.group(2) or "0", m.group(3), m.group(4) or m.group(5)
    # 0.a(b) = (ab - a) / (10^|a| (10^|b| - 1)): 0.1(6) = (16 - 1) / (10 * 9)
    tail = Fraction(int(fixed + cycle) - int(fixed or "0"), 10 ** len(fixed) * (10 ** len(cycle) - 1))
    v = int(whole) + tail
    return -v if sign else v


def _plain_number(s: str) -> tuple[Fraction | float, int | None] | None:
    rep = _repeating(s)
    if rep is not None:
        return rep, None  # exact: no rounding leniency on its side
    s = s.replace(" ", "") if re.fullmatch(r"-?\d{1,3}(?: \d{3})+(?:\.\d+)?", s) else s  # 1 234 567
    if re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):  # thousands separators
        s = s.replace(",", "")
    m = re.fullmatch(r"(-?)(\d*)\.?(\d*)", s)
    if m and (m.group(2) or m.group(3)) and s.count(".") <= 1:
        return Fraction(s if not s.startswith((".", "-.")) else s.replace(".", "0.", 1)), (
            len(m.group(3)) if "." in s else None
        )
    sci = re.fullmatch(
        r"(-?\d+(?:\.\d+)?)\s*(?:[eE]\s*([-+]?\d+)|(?:\\times|\\cdot|×|x|\*)\s*10\s*(?:\^|\*\*)\s*\{?\s*([-+]?\d+)\s*\}?)",
        s,
    )
    if sci:
        exp = int(sci.group(2) or sci.group(3))
        if abs(exp) > 300:
            return None
        return Fraction(sci.group(1)) * Fraction(10) ** exp, None
    frac = re.fullmatch(
        r"(-?)\s*(?:(\d+)\s*)?\\frac\s*(?:\{\s*(\d+)\s*\}|(\d))\s*(?:\{\s*(\d+)\s*\}|(\d))", s
    )
    if frac:
        sign, whole, num, den = (
            frac.group(1),
            frac.group(2),
            frac.group(3) or frac.group(4),
            frac.group(5) or frac.group(6),
        )
        if int(den) == 0:
            return None
        v = Fraction(int(whole or 0)) + Fraction(int(num), int(den))
        return (-v if sign else v), None
    slash = re.fullmatch(r"(-?)\s*(?:(\d+)\s+)?(\d+(?:\.\d+)?)\s*/\s*(\d+(?:\.\d+)?)", s)
    if slash and Fraction(slash.group(4)) != 0:
        v = Fraction(int(slash.group(2) or 0)) + Fraction(slash.group(3)) / Fraction(slash.group(4))
        return (-v if slash.group(1) else v), None
    return None


def _infinity(s: str) -> float | None:
    """'\\infty', '∞', 'inf', 'infinity', '+\\infty', '-\\infty', 'negative infinity', 'minus infinity',
    '无穷大', '负无穷' -> +-inf; else None."""
    m = re.fullmatch(
        r"([+-]?)\s*(?:(positive|plus)|(negative|minus))?\s*"
        r"(?:\\infty|\\infin|∞|inf|infinity|infinite|\\inf|(?:正)?无穷(?:大)?|(负)无穷(?:大)?)",
        s.lower(),
    )
    if not m:
        return None
    return float("-inf") if m.group(1) == "-" or m.group(3) or m.group(4) else float("inf")


_EN_UNITS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
        ]
    )
}
_EN_TENS = {
    w: 10 * i
    for i, w in enumerate(
        ["_", "_", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
    )
}
_EN_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_EN_WORDS = {*_EN_UNITS, *_EN_TENS, *_EN_SCALES, "and", "minus", "negative", "a", "dozen"} - {"_"}


def _english_number(s: str) -> int | None:
    """'twenty-one', 'one hundred and five', 'minus three', 'a dozen' -> int; else None."""
    words = re.sub(r"[-,]", " ", s.lower()).split()
    if not words or any(w not in _EN_WORDS for w in words):
        return None
    if words[-1] == "a":  # "a" alone is a letter or a variable, not one
        return None
    sign = -1 if words[0] in ("minus", "negative") else 1
    words = [w for w in words if w not in ("and", "minus", "negative")]
    if words == ["a", "dozen"] or words == ["dozen"]:
        return 12 * sign
    total, current, seen = 0, 0, False
    for w in words:
        if w in _EN_UNITS:
            current += _EN_UNITS[w]
        elif w in _EN_TENS:
            current += _EN_TENS[w]
        elif w == "hundred":
            current = max(current, 1) * 100
        elif w in _EN_SCALES:
            total += max(current, 1) * _EN_SCALES[w]
            current = 0
        elif w == "a":
            current += 1
        else:
            return None
        seen = True
    return sign * (total + current) if seen else None


_ZH_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_ZH_SMALL = {"十": 10, "百": 100, "千": 1000}
_ZH_BIG = {"万": 10**4, "亿": 10**8}


def _zh_int(s: str) -> int | None:
    if not s or any(c not in _ZH_DIGITS and c not in _ZH_SMALL and c not in _ZH_BIG for c in s):
        return None
    total, section, digit = 0, 0, None
    for c in s:
        if c in _ZH_DIGITS:
            digit = (
                _ZH_DIGITS[c] if digit is None else digit * 10 + _ZH_DIGITS[c]
            )  # 一二三 read digit by digit
        elif c in _ZH_SMALL:
            section += (1 if digit is None else digit) * _ZH_SMALL[c]
            digit = None
        else:
            total = (total + section + (digit or 0)) * _ZH_BIG[c]
            section, digit = 0, None
    return total + section + (digit or 0)


def _zh_value(s: str) -> Fraction | None:
    sign = -1 if s.startswith("负") else 1
    s = s.lstrip("负")
    if "点" in s:  # 三点五
        whole, _, frac = s.partition("点")
        w = _zh_int(whole) if whole else 0
        if w is None or not frac or any(c not in _ZH_DIGITS for c in frac):
            return None
        return sign * (Fraction(w) + Fraction("0." + "".join(str(_ZH_DIGITS[c]) for c in frac)))
    if re.fullmatch(r"\d+(?:\.\d+)?", s):
        return sign * Fraction(s)
    v = _zh_int(s)
    return None if v is None else sign * Fraction(v)


def _chinese_number(s: str) -> Num | None:
    """'二十一', '一百零五', '三分之二', '百分之五十', '负三点五', '21个' -> Num; else None."""
    s = re.sub(
        r"(?<=[\d零〇一二两三四五六七八九十百千万亿])(?:个|只|本|元|块|人|岁|米|厘米|千克|公斤|克|天|小时|分钟|次|辆|张|支|箱|瓶|颗|头|条|页|名|道|题|cm|m|km|kg|g)$",
        "",
        s,
    )
    if not _CJK.search(s):
        return None
    m = re.fullmatch(r"百分之(.+)", s)
    if m:
        v = _zh_value(m.group(1))
        return None if v is None else Num(v, percent=True)
    m = re.fullmatch(r"(.+)分之(.+)", s)
    if m:
        den, num = _zh_value(m.group(1)), _zh_value(m.group(2))
        return None if not den or num is None else Num(num / den)
    v = _zh_value(s)
    return None if v is None else Num(v)


def numbers_equal(a: Num, b: Num) -> bool:
    """a (pred) vs b (ref): a percentage matches its number or its fraction of 1."""
    for x in _readings(a):
        for y in _readings(b):
            if _close(x, a.decimals if x == a.value else None, y, b.decimals if y == b.value else None):
                return True
    return False


def _readings(n: Num) -> list:
    return [n.value, n.value / 100] if n.percent else [n.value]


def _close(x, dx: int | None, y, dy: int | None) -> bool:
    if isinstance(x, float) or isinstance(y, float):
        fx, fy = float(x), float(y)
        if fx == fy:
            return True
        if abs(fx) == float("inf") or abs(fy) == float("inf"):
            return False
        return abs(fx - fy) <= 1e-9 * max(1.0, abs(fy))
    if x == y:
        return True
    # a decimal rounded to d >= 2 places equals a value that has no exact d-place form (2/3 ~ 0.67)
    for rounded, d, exact in ((x, dx, y), (y, dy, x)):
        if d is not None and d >= 2 and not _terminates(exact) and _round(exact, d) == rounded:
            return True
    return False


def _terminates(q: Fraction) -> bool:
    den = q.denominator
    for p in (2, 5):
        while den % p == 0:
            den //= p
    return den == 1


def _round(q: Fraction, d: int) -> Fraction:
    scaled = q * 10**d
    return Fraction(int(scaled + (Fraction(1, 2) if scaled >= 0 else Fraction(-1, 2))), 10**d)


# ---- collections, letters -------------------------------------------------------------------------


@dataclass(frozen=True)
class Coll:
    kind: str  # "interval" | "set" | "tuple" | "list" | "union"
    items: tuple = field(default=())
    left: str = ""  # bracket kinds, for intervals and tuples
    right: str = ""


def collection(s: str) -> Coll | None:
    """Intervals, sets, tuples, bare comma lists, unions of intervals."""
    s = normalize(s)
    if "\\cup" in s or "∪" in s:
        parts = [collection(p) for p in re.split(r"\\cup|∪", s)]
        if all(p is not None and p.kind in ("interval", "tuple") for p in parts):
            return Coll("union", tuple(parts))
        return None
    m = re.fullmatch(r"\\\{(.*)\\\}|\{(.*)\}", s)
    if m:
        return Coll("set", tuple(split_top(m.group(1) if m.group(1) is not None else m.group(2))))
    m = re.fullmatch(r"([\[(])(.*)([\])])", s)
    if m and len(split_top(m.group(2))) >= 2:
        items = tuple(split_top(m.group(2)))
        kind = (
            "interval"
            if m.group(1) != m.group(3).translate({93: 91, 41: 40})
            or any(_infinity(i) is not None for i in items)
            else "tuple"
        )
        return Coll(kind, items, m.group(1), m.group(3))
    items = split_top(s)
    if len(items) >= 2 and not re.fullmatch(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?", s):
        return Coll("list", tuple(items))
    return None


def split_top(s: str) -> list[str]:
    """Split on commas (or ；/;) that are not inside brackets or braces."""
    out, depth, cur = [], 0, ""
    for c in s:
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c in ",;，；" and depth == 0:
            out.append(cur.strip())
            cur = ""
        else:
            cur += c
    out.append(cur.strip())
    return [x for x in out if x]


def collections_equal(a: Coll, b: Coll) -> bool:
    if a.kind == "union" or b.kind == "union":
        if a.kind != b.kind or len(a.items) != len(b.items):
            return False
        return _match_unordered(list(a.items), list(b.items), collections_equal)
    if a.kind in ("interval", "tuple") or b.kind in ("interval", "tuple"):
        if (a.left, a.right) != (b.left, b.right) or len(a.items) != len(b.items):
            return False
        return all(equivalent(x, y) for x, y in zip(a.items, b.items, strict=True))
    # sets and bare lists: the same elements in any order
    if len(a.items) != len(b.items):
        return False
    return _match_unordered(list(a.items), list(b.items), equivalent)


def _match_unordered(xs: list, ys: list, eq) -> bool:
    left = list(ys)
    for x in xs:
        hit = next((k for k, y in enumerate(left) if eq(x, y)), None)
        if hit is None:
            return False
        left.pop(hit)
    return not left


_LETTER_ONLY = re.compile(
    r"(?:\(?([A-Ea-e])\)?[.):]?|(?:option|choice)\s*\(?([A-Ea-e])\)?|选(?:项)?\s*\(?([A-Ea-e])\)?)"
    r"(?:\s*[.:：)]\s*.*)?",
    re.I,
)


_ANSWER_PREFIX = re.compile(r"^(?:the\s+)?(?:final\s+|correct\s+)?answer\s*(?:is\s*)?[:：]?\s*", re.I)


def letter(s: str) -> str | None:
    """'B', '(b)', 'B)', 'B. 5/8', '(B) 5', 'option B', '选B', '\\text{(B)}', 'Answer: B' -> 'B'; else None."""
    t = _UNIT_WRAP.sub(lambda m: m.group(1), normalize(s))  # \\text{(B)} -> (B)
    t = _ANSWER_PREFIX.sub("", t.strip().strip("*").strip())
    m = _LETTER_ONLY.fullmatch(t.strip().strip("*").strip())
    return next(g for g in m.groups() if g).upper() if m else None


# ---- equivalence ------------------------------------------------------------------------------------


def _squash(s: str) -> str:
    return re.sub(r"\s+", "", normalize(s)).casefold()


def equivalent(pred: str | None, ref: str | None) -> bool:
    """Whether the predicted answer equals the reference answer (see the module docstring)."""
    if pred is None or ref is None:
        return False
    # a worked solution on either side (a raw GSM8K/MATH reference) compares by the answer it states
    pred, ref = reference_answer(pred), reference_answer(ref)
    if pred is None or ref is None:
        return False
    if _squash(pred) == _squash(ref):
        return True
    lr = letter(ref)
    if lr is not None:  # a multiple-choice reference: only the same letter matches
        return letter(pred) == lr
    np_, nr = number(pred), number(ref)
    if np_ is not None and nr is not None:
        return numbers_equal(np_, nr)
    cp, cr = collection(pred), collection(ref)
    if cp is not None and cr is not None:
        return collections_equal(cp, cr)
    return math_verify_equal(pred, ref)


def _costly(s: str) -> bool:
    """What makes sympy hang: long inputs, huge exponents, huge factorials."""
    return (
        len(s) > MAX_SYMPY_CHARS
        or re.search(r"(?:\^|\*\*)\s*\{?\s*[-+]?\d{4,}", s) is not None
        or re.search(r"\d{3,}\s*!", s) is not None
        or s.count("^") > 6
    )


def math_verify_equal(pred: str, ref: str) -> bool:
    """math-verify: verify(parse(gold), parse(pred)), gold first, each side raw and in $...$."""
    from math_verify import parse, verify  # sympy + antlr: loaded on first use

    pred, ref = normalize(pred), normalize(ref)
    if _costly(pred) or _costly(ref):
        return False
    limit = MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None

    def parsed(s: str) -> list:
        out = []
        for form in (f"${s}$", s):
            out += parse(form, parsing_timeout=limit)
        return out

    gold, target = parsed(ref), parsed(pred)
    if not gold or not target:
        return False
    return bool(verify(gold, target, timeout_seconds=limit))


def math_verify_direct(pred: str | None, ref: str | None) -> bool:
    """math-verify used directly, as its README shows (the baseline our equivalent() is measured against)."""
    from math_verify import parse, verify

    if pred is None or ref is None:
        return False
    limit = MV_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None
    return bool(
        verify(
            parse(str(ref), parsing_timeout=limit),
            parse(str(pred), parsing_timeout=limit),
            timeout_seconds=limit,
        )
    )


# ---- self-consistency ---------------------------------------------------------------------------------


@dataclass
class Vote:
    answer: str | None  # the first-seen member of the winning cluster; None if no sample answered
    votes: int  # samples in the winning cluster
    share: float  # votes / all samples (those without an answer count in the denominator)
    tie: bool  # another cluster has as many votes
    clusters: list[dict]  # [{"answer": representative, "members": [sample indexes]}], biggest first


def majority_vote(answers: list[str | None]) -> Vote:
    """Cluster extracted answers by equivalent() (each joins the first cluster whose representative it
    equals) and return the biggest; ties go to the cluster seen first, flagged tie=True."""
    clusters: list[dict] = []
    for i, a in enumerate(answers):
        if a is None:
            continue
        home = next((c for c in clusters if equivalent(a, c["answer"])), None)
        if home is None:
            clusters.append({"answer": a, "members": [i]})
        else:
            home["members"].append(i)
    clusters.sort(key=lambda c: (-len(c["members"]), c["members"][0]))
    if not clusters:
        return Vote(None, 0, 0.0, False, [])
    top = len(clusters[0]["members"])
    tie = len(clusters) > 1 and len(clusters[1]["members"]) == top
    return Vote(clusters[0]["answer"], top, top / max(len(answers), 1), tie, clusters)
