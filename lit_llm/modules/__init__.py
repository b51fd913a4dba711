"""lit_llm.modules"""
