"""What serves a trained model, kept out of `vanilla_transformer.modeling` (whose files are the code that ships to the
Hub with a saved model):

- `server`, `backends`, `batching`: `vanilla-transformer serve`, the HTTP API (FastAPI), the model behind it (a
  PyTorch folder, its CTranslate2 export, a BERT folder's pipelines) and the batching of concurrent requests;
- `ctranslate2_translator.CTranslate2Translator`: translation with a CTranslate2 export;
- `demo_app`: the Gradio page of `vanilla-transformer demo`, self-contained, and `space`: the Hugging Face Space
  folder of `publish --space`, which runs that page without this package.
"""
