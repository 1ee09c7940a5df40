"""Worked arithmetic written the way a tiny model can compute it reliably.

Qwen2's pre-tokenizer splits numbers into single digits, so every line below asks the model for
one single-digit fact at a time (a column sum, a product, a quotient) and keeps a running result
("so 23") that grows by one digit per line. Writing that running result in full on every line
turns the final answer into a copy of the line above instead of a reversal of scattered digits,
which is what small transformers get wrong. Operands are written without spaces ("48+24") to keep
sequences short: each space before a digit would cost a token of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

COLUMN_NAMES = ("ones", "tens", "hundreds", "thousands", "ten-thousands")


def _digits_low_first(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


@dataclass
class Worksheet:
    """Collects the lines of a worked calculation; each method returns the exact result."""

    lines: list[str] = field(default_factory=list)

    def add(self, a: int, b: int) -> int:
        da, db = _digits_low_first(a), _digits_low_first(b)
        width = max(len(da), len(db))
        da += [0] * (width - len(da))
        db += [0] * (width - len(db))
        self.lines.append(f"{a}+{b}:")
        carry, so_far = 0, ""
        for col in range(width):
            if col == 0:
                total = da[col] + db[col]
                sum_text = f"{da[col]}+{db[col]}={total}"
            else:
                total = da[col] + db[col] + carry
                sum_text = f"{da[col]}+{db[col]}+{carry}={total}"
            carry, digit = divmod(total, 10)
            so_far = f"{digit}{so_far}"
            self.lines.append(f"{COLUMN_NAMES[col]}: {sum_text}, carry {carry}, so {so_far}")
        if carry:
            so_far = f"{carry}{so_far}"
            self.lines.append(f"{COLUMN_NAMES[width]}: carry {carry}, so {so_far}")
        result = a + b
        assert int(so_far) == result
        self.lines.append(f"{a}+{b}={result}")
        return result

    def subtract(self, a: int, b: int) -> int:
        if b > a:
            raise ValueError("the worksheet only subtracts a smaller number from a larger one")
        da, db = _digits_low_first(a), _digits_low_first(b)
        db += [0] * (len(da) - len(db))
        self.lines.append(f"{a}-{b}:")
        borrow, so_far = 0, ""
        for col in range(len(da)):
            top = da[col]
            need = db[col] + borrow
            # Borrowing is decided before the subtraction is written, so the line shows the
            # minuend already increased by ten ("14-8") and never a negative intermediate.
            new_borrow = 1 if top < need else 0
            top_text = f"1{top}" if new_borrow else f"{top}"
            digit = top + 10 * new_borrow - need
            if col == 0:
                diff_text = f"{top_text}-{db[col]}={digit}"
            else:
                diff_text = f"{top_text}-{db[col]}-{borrow}={digit}"
            borrow = new_borrow
            so_far = f"{digit}{so_far}"
            self.lines.append(f"{COLUMN_NAMES[col]}: {diff_text}, borrow {borrow}, so {so_far}")
        result = a - b
        assert int(so_far) == result and borrow == 0
        self.lines.append(f"{a}-{b}={result}")
        return result

    def multiply(self, a: int, d: int) -> int:
        """a times a single digit d."""
        if not 0 <= d <= 9:
            raise ValueError("the worksheet multiplies by one digit at a time")
        da = _digits_low_first(a)
        self.lines.append(f"{a}×{d}:")
        carry, so_far = 0, ""
        for col, digit_a in enumerate(da):
            product = digit_a * d
            total = product + carry
            if col == 0:
                step = f"{digit_a}×{d}={product}"
            else:
                step = f"{digit_a}×{d}={product}, {product}+{carry}={total}"
            carry, digit = divmod(total, 10)
            so_far = f"{digit}{so_far}"
            self.lines.append(f"{COLUMN_NAMES[col]}: {step}, carry {carry}, so {so_far}")
        if carry:
            so_far = f"{carry}{so_far}"
            self.lines.append(f"{COLUMN_NAMES[len(da)]}: carry {carry}, so {so_far}")
        result = a * d
        assert int(so_far) == result
        self.lines.append(f"{a}×{d}={result}")
        return result

    def divide(self, a: int, d: int) -> int:
        """Exact long division of a by a single digit d, from the highest column down."""
        if not 2 <= d <= 9 or a % d:
            raise ValueError("the worksheet divides exactly by one digit")
        digits = [int(c) for c in str(a)]
        self.lines.append(f"{a}/{d}:")
        remainder, so_far = 0, ""
        for i, digit in enumerate(digits):
            col = len(digits) - 1 - i
            current = remainder * 10 + digit
            quotient, remainder = divmod(current, d)
            so_far += str(quotient)
            self.lines.append(
                f"{COLUMN_NAMES[col]}: {current}/{d}={quotient} r {remainder}, so {so_far}"
            )
        result = a // d
        assert int(so_far) == result and remainder == 0
        self.lines.append(f"{a}/{d}={result}")
        return result
