"""The rule language: grammar -> AST (parser) -> compiled hook chain (compiler).

Only ``parser`` touches lark; everything after it sees the frozen AST nodes
of ``ast``.
"""
