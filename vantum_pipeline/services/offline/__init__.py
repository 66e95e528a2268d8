"""The offline default: local engines that need no keys and no network.

Engines (plain classes, no asyncio; one concept per module):

- ``espeak``: ``EspeakSynthesizer`` (espeak-ng through ctypes: pcm16 and word timings);
- ``language_model``: ``DomainLanguageModel`` (pocketsphinx model of a campaign's phrases);
- ``recognizer``: ``PocketsphinxRecognizer`` (streaming partials and finals);
- ``agent``: ``ScriptedSalesAgent`` (a rule-based sales conversation);
- ``word_accuracy``: scoring transcripts against what was said.

They need the ``offline`` extra (``pip install 'vantum-pipeline[offline]'``);
importing this package does not import the engines' libraries.
"""
