"""Serving exported models: `ctranslate2_translator.CTranslate2Translator` translates with a CTranslate2 export.
Kept out of `vanilla_transformer.modeling`, whose files are the code that ships to the Hub with a saved model."""
