"""lit_llm.datamodules"""
