"""Data: corpora (:mod:`~odqa.data.corpus`), question sets (:mod:`~odqa.data.questions`), and the
builders of training data: synthetic cloze QA (:mod:`~odqa.data.cloze`), the ID-PT multitask
mixture (:mod:`~odqa.data.multitask`), and training examples with mined hard negatives
(:mod:`~odqa.data.negatives`)."""
