"""The method, stage by stage: patches and their labels -> classifier -> CAMs and pseudo-masks -> segmentation
(OEEM loss) -> self-training rounds -> prediction and scores. ``run`` chains them into one resumable job."""
