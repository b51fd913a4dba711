"""lit_llm.strategies"""
