"""Commands that search: query (a file, a URL, standard input, an indexed photo or a label), labels and eval."""

from __future__ import annotations

import os
from datetime import date
from typing import Any

import click

from ..catalog import ImageFilter
from ..errors import QueryError
from ..labels import DEFAULT_MIN_PROBABILITY, Vocabulary
from ..probes import is_url, read_stdin
from .common import (
    _FORMAT,
    _PIXELS,
    _WHEN,
    _emit,
    _json_option,
    _open,
    _output,
    _output_option,
    _print_json,
    _runtime_option,
    _store_options,
    main,
)


def _probe(image: str, hint: str = "IMAGE") -> Any:
    """A path, an http(s) URL (fetched by the store) or - for standard input."""
    if image == "-":
        return read_stdin(click.get_binary_stream("stdin"))
    if not is_url(image) and not os.path.exists(image):
        raise click.BadParameter(f"file {image!r} does not exist", param_hint=hint)
    return image


def _label(ctx: click.Context, param: click.Parameter, word: str | None) -> str | None:
    """A word the shipped table knows, checked before the store opens: a typo gets suggestions (exit 2)."""
    if word is not None:
        try:
            Vocabulary.shipped().meaning(word)
        except QueryError as exc:
            raise click.BadParameter(str(exc)) from None
    return word


def _examples(images: tuple[str, ...], ids: tuple[int, ...], hint: str) -> list[Any]:
    return [_probe(i, hint) for i in images] + list(ids)


@main.command()
@click.argument("images", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--id", "image_ids", type=int, multiple=True, help="An indexed photo's id as an example (repeatable).")
@click.option("--not", "not_images", multiple=True, type=click.Path(dir_okay=False, allow_dash=True), metavar="IMAGE",
              help="A photo of what you do not want: its look-alikes move down (repeatable).")
@click.option("--not-id", "not_ids", type=int, multiple=True, help="An indexed photo's id as a --not example (repeatable).")
@click.option("-k", "--top", "k", type=click.IntRange(1, 10_000), default=10, show_default=True,
              help="How many neighbours to return.")
@click.option("--folder", type=click.Path(file_okay=False), help="Only photos under this folder.")
@click.option("--taken-from", type=_WHEN, help="Only photos taken on or after this date (EXIF).")
@click.option("--taken-until", type=_WHEN, help="Only photos taken on or before this date (EXIF; a date is the whole day).")
@click.option("--format", "formats", multiple=True, type=_FORMAT,
              help="Only this format: a name or an extension, any case, e.g. JPEG, jpg, heic (repeatable).")
@click.option("--min-pixels", type=_PIXELS, help="Only photos of at least this many pixels: 2000000, 2M or 800k.")
@click.option("--label", metavar="WORD", callback=_label,
              help="Photos of this ImageNet class or WordNet word ('golden retriever', 'dog', 'vehicle'), most "
                   "probable first; with IMAGES or --id, those photos ranked by similarity instead. Needs a store "
                   "indexed with --labels.")
@click.option("--min-probability", type=click.FloatRange(0, 1), default=DEFAULT_MIN_PROBABILITY, show_default=True,
              help="With --label: the least probability a photo's classes under the word must add up to.")
@_store_options
@_runtime_option
@_output_option
def query(images: tuple[str, ...], image_ids: tuple[int, ...], not_images: tuple[str, ...], not_ids: tuple[int, ...],
          k: int, folder: str | None, taken_from: date | None,
          taken_until: date | None, formats: tuple[str, ...], min_pixels: int | None, label: str | None,
          min_probability: float, store: str | None, model: str | None, db: str | None, runtime: str | None,
          device: str | None, output: str | None, as_json: bool) -> None:
    """Print the photos most similar to IMAGES (files, http(s) URLs, or - for standard input) and indexed
    photos given by --id. Several examples find photos like all of them (their mean vector); --not
    examples push their look-alikes down.

    Filters narrow the candidates first, so the k shown are the true top k among matching photos.

    \b
      simsearch query probe.jpg -k 10
      simsearch query https://example.com/cat.jpg -o paths | xargs open
      simsearch query - < probe.jpg
      simsearch query --id 42 --json
      simsearch query beach1.jpg beach2.jpg --not crowd.jpg
      simsearch query probe.jpg --folder ~/Pictures/2023 --taken-from 2023-06-01 --format JPEG
      simsearch query --label "golden retriever" -k 20
      simsearch query --label dog beach.jpg      # dogs, the most like beach.jpg first
    """
    if not images and not image_ids and label is None:
        raise click.UsageError("give at least one IMAGE, --id or --label (--not alone says only what to push down)")
    out = _output(output, as_json)
    if (*images, *not_images).count("-") > 1:  # checked before either reads it
        raise click.BadParameter("standard input (-) can be read once", param_hint="IMAGE / --not")
    positives = _examples(images, image_ids, "IMAGE")
    negatives = _examples(not_images, not_ids, "--not")
    probe = (positives[0] if len(positives) == 1 else positives) if positives else None
    where = ImageFilter(folder=folder, taken_from=taken_from, taken_until=taken_until, formats=formats,
                        min_pixels=min_pixels)
    with _open(store, model, db, runtime=runtime, device=device) as s:
        hits = s.query(probe, k=k, negative=negatives, where=where or None, label=label,
                       min_probability=min_probability)

    def text() -> None:
        for h in hits:
            click.echo(f"{h.score:.4f}  {h.id:>7}  {h.path}")
        if not hits and label is not None:
            click.echo(f"no photo labelled {label!r} with probability >= {min_probability:g}"
                       + (" among those the filters keep" if where else ""), err=True)

    _emit([h.to_dict() for h in hits], out, text)


@main.command()
@click.argument("image", required=False, type=click.Path(dir_okay=False, allow_dash=True))
@click.option("--id", "image_id", type=int, help="An indexed photo's id instead of IMAGE.")
@click.option("-k", "--top", "k", type=click.IntRange(1, 1000), default=5, show_default=True,
              help="How many classes to print.")
@click.option("--classifier", metavar="HANDLE",
              help="For a photo not in the store: the classification module [default: the store's, else Inception V2's].")
@_store_options
@_runtime_option
@_output_option
def labels(image: str | None, image_id: int | None, k: int, classifier: str | None, store: str | None,
           model: str | None, db: str | None, runtime: str | None, device: str | None, output: str | None,
           as_json: bool) -> None:
    """Print a photo's top ImageNet labels with their probabilities: an indexed photo (--id, or its unchanged
    file) from the store's labels, any other IMAGE (a file, an http(s) URL, - for standard input) classified now.

    \b
      simsearch labels --id 42
      simsearch labels holiday.jpg -k 10 --json
    """
    if (image is None) == (image_id is None):
        raise click.UsageError("give an IMAGE or --id")
    out = _output(output, as_json)
    probe = image_id if image_id is not None else _probe(str(image))
    with _open(store, model, db, classifier=classifier, runtime=runtime, device=device) as s:
        found = s.labels_of(probe, k=k)

    def text() -> None:
        for label in found:
            click.echo(f"{label.probability:.4f}  {label.name}")

    _emit([label.to_dict() for label in found], out, text)


@main.command("eval")
@click.argument("labels", type=click.Path(exists=True), required=False)
@click.option("-k", "--top", "k", type=click.IntRange(1, 1000), default=10, show_default=True, help="k of precision@k.")
@click.option("--ann", is_flag=True, help="Also print recall@k of the store's index against exact search.")
@_store_options
@_json_option
def eval_(labels: str | None, k: int, ann: bool, store: str | None, model: str | None, db: str | None,
          as_json: bool) -> None:
    """Measure retrieval quality: mean average precision and precision@k on labelled photos.

    LABELS is a folder with one subfolder per class, or a CSV with columns file, class and optionally
    split (db / query), like corel1k's labels.csv. Index the photos into the store first.

    \b
      simsearch index ../shared/data/corel1k/images --store data/corel
      simsearch eval ../shared/data/corel1k/labels.csv --store data/corel
      simsearch eval --ann --store data/photos
    """
    from ..evaluate import Labels, evaluate

    if labels is None and not ann:
        raise click.UsageError("give LABELS, --ann, or both")
    result: dict[str, Any] = {}
    with _open(store, model, db) as s:
        if labels is not None:
            parsed = Labels.from_folder(labels) if os.path.isdir(labels) else Labels.from_csv(labels)
            result = evaluate(s, parsed, k=k).to_dict()
        if ann:
            result |= {"index_kind": s.stats().index_kind, "ann_recall_at_k": s.ann_recall(k=k), "k": k}
    if as_json:
        _print_json(result)
        return
    if labels is not None:
        click.echo(f"mAP {result['mean_average_precision']:.4f}   P@{k} {result['precision_at_k']:.4f}   "
                   f"({result['queries']} queries, {result['database']} in the database"
                   + (f", {result['missing']} labelled photos not indexed)" if result["missing"] else ")"))
    if ann:
        click.echo(f"recall@{k} of the {result['index_kind']} index against exact search: {result['ann_recall_at_k']:.4f}")
