"""The lecture tour: every experiment, small and fast, on data that ships with
the packages (scikit-learn's digits), gathered into one HTML report.

`make demo` runs `run_tour('runs/demo')`. Each experiment is a sweep of a
config file in `configs/`, trained with the shared loop; rerunning the tour
resumes finished and half-finished runs from their checkpoints.
"""

import copy
import os
from typing import Callable

import ml_collections

from frontiers_jax import config as config_lib
from frontiers_jax import data as data_lib
from frontiers_jax import report
from frontiers_jax import runs as runs_lib
from frontiers_jax import sweep
from frontiers_jax.errors import UsageError
from frontiers_jax.progress import Progress
from frontiers_jax.training import loop
from frontiers_jax.workloads import approximation as approximation_lib
from frontiers_jax.workloads import bias as bias_lib
from frontiers_jax.workloads import diffusion_scores
from frontiers_jax.workloads import generalization as generalization_lib
from frontiers_jax.workloads import lm as lm_lib
from frontiers_jax.workloads import uncertainty as uncertainty_lib

ConfigLoader = Callable[[str], ml_collections.ConfigDict]

APPROXIMATION_TARGETS = ('sine', 'abs', 'bumps', 'ripple')
SHOWN_WIDTHS = (1, 4, 16, 64, 256, 1024)


def config_loader(configs_dir: str, quiet: bool = True) -> ConfigLoader:
  def load(spec: str) -> ml_collections.ConfigDict:
    config = config_lib.load_config(os.path.join(configs_dir, spec))
    config.quiet = quiet
    return config
  return load


def approximation_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  config = load('approximation.py:tiny' if quick else 'approximation.py')
  if not quick:
    config.num_steps = 3000
  targets = APPROXIMATION_TARGETS[:2] if quick else APPROXIMATION_TARGETS
  runs = sweep.run_sweep(config, workdir, 'target', targets)
  figures = sweep.sweep_figures('approximation', runs, os.path.join(workdir, 'figures'))
  widths = [w for w in SHOWN_WIDTHS if w in config.widths] or list(config.widths)
  table = [['target'] + [f'width {w}' for w in widths]]
  for target, run in runs.items():
    final = run['summary']['final']
    table.append([target] + [final.get(f'eval/{approximation_lib.width_key(w)}')
                             for w in widths])
  fits = [os.path.join(run['workdir'], 'figures', 'fits.png') for run in runs.values()]
  return report.Section(
      title='Universal approximation: one hidden layer, growing width',
      paragraphs=[
          'A network with a single hidden layer can approximate any continuous '
          'function on a compact set, given enough hidden units. Here one run per '
          'target trains one-hidden-layer ReLU networks of widths '
          f'{", ".join(map(str, config.widths))} side by side for '
          f'{config.num_steps} Adam steps on {config.num_train} random points; the '
          'table gives the test mean squared error on a dense grid.',
          _width_finding(runs, config.widths),
          'The curves need not be monotone: |x| is exactly two ReLUs, so a narrow '
          'network can already fit it, and for the widest networks the finite '
          'training budget, not capacity, sets the floor. The theorem promises '
          'that a good network exists; gradient descent has to find it.'],
      table=table, figures=figures + fits)


def _width_finding(runs: dict, widths) -> str:
  """One measured sentence: how much the widest net beats width 1, per target."""
  narrow, wide = min(widths), max(widths)
  ratios = []
  for target, run in runs.items():
    final = run['summary']['final']
    e_narrow = final[f'eval/{approximation_lib.width_key(narrow)}']
    e_wide = final[f'eval/{approximation_lib.width_key(wide)}']
    ratios.append(f'{target} {e_narrow / e_wide:,.0f}x')
  return (f'Measured here, the test error of width {wide} is below that of width '
          f'{narrow} by: ' + ', '.join(ratios) + '.')


def generalization_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  config = load('generalization.py:tiny' if quick else 'generalization.py:digits')
  cnn_config = load('generalization.py:tiny' if quick else 'generalization.py:digits_cnn')
  cnn_config.model.name = 'cnn'
  kinds = ('none', 'random_labels') if quick else generalization_lib.RANDOMIZATIONS
  cnn_kinds = ('none', 'shuffled_pixels', 'random_labels')[:len(kinds)]
  runs = sweep.run_sweep(config, os.path.join(workdir, 'mlp'), 'randomization', kinds)
  cnn_runs = sweep.run_sweep(cnn_config, os.path.join(workdir, 'cnn'), 'randomization',
                             cnn_kinds)
  partial = copy.deepcopy(config)
  partial.randomization = 'partial'
  levels = (0.0, 1.0) if quick else (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
  noise_runs = sweep.run_sweep(partial, os.path.join(workdir, 'corruption'), 'corruption',
                               levels)
  figures = (sweep.sweep_figures('generalization', runs, os.path.join(workdir, 'figures'))
             + sweep.sweep_figures('generalization', noise_runs,
                                   os.path.join(workdir, 'corruption', 'figures')))
  table = [['model', 'randomization', 'train accuracy', 'test accuracy',
            'steps to 99 % train']]
  for model, model_runs in (('mlp', runs), ('cnn', cnn_runs)):
    for kind, run in model_runs.items():
      final = run['summary']['final']
      table.append([model, kind, final.get('eval_train/accuracy'),
                    final.get('eval/accuracy'),
                    generalization_lib.steps_to_fit(run['history'])])
  lowest_fit = min(row[2] for row in table[1:])
  return report.Section(
      title='Rethinking generalization: deep nets fit random data',
      paragraphs=[
          'Zhang et al. (2017) trained standard networks on data whose labels or '
          'pixels were randomized. The networks still fit the training set '
          'perfectly, while test accuracy fell to chance: capacity alone cannot '
          'explain why networks generalize on real data.',
          f'Here: an MLP with hidden widths {tuple(config.model.hidden)} on '
          f'scikit-learn\'s digits ({config.num_steps} steps of batch '
          f'{config.batch_size}); partial label corruption at '
          f'{config.corruption:.0%}; a small CNN on three of the same settings; '
          'and the MLP again with the fraction of corrupted labels swept from 0 '
          'to 1 (last figure). '
          '"Train accuracy" is measured on the whole training set as it was '
          'trained (randomized); test labels are real.',
          f'Measured here: every run fits its training set to at least '
          f'{lowest_fit:.1%}, while test accuracy ranges from '
          f'{min(row[3] for row in table[1:]):.1%} to {max(row[3] for row in table[1:]):.1%} '
          '(chance: 10 %).', _shuffle_finding(runs, cnn_runs)],
      table=table, figures=figures)


def _shuffle_finding(mlp_runs: dict, cnn_runs: dict) -> str:
  """Test accuracy with and without a fixed pixel shuffle, per model."""
  parts = []
  for model, runs in (('MLP', mlp_runs), ('CNN', cnn_runs)):
    if 'none' in runs and 'shuffled_pixels' in runs:
      real, shuffled = (runs[k]['summary']['final']['eval/accuracy']
                        for k in ('none', 'shuffled_pixels'))
      parts.append(f'{model} {real:.1%} -> {shuffled:.1%}')
  if not parts:
    return ''
  return ('Test accuracy on real vs fixed-shuffled pixels: ' + ', '.join(parts) +
          '. A dense layer has no notion of neighbouring pixels, so a fixed '
          'shuffle only relabels its inputs; a convolution relies on neighbours.')


def adversarial_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  config = load('adversarial.py:tiny' if quick else 'adversarial.py:digits')
  runs = sweep.run_sweep(config, workdir, 'train_method', ('standard', 'pgd'))
  a = config.attack
  table = [['training', 'clean test accuracy',
            f'test accuracy under PGD-{a.eval_steps} ({a.norm}, eps {a.eps:g})']]
  figures = []
  for method, run in runs.items():
    final = run['summary']['final']
    table.append([method, final['eval/accuracy'], final['eval/robust_accuracy']])
    figures.append(os.path.join(run['workdir'], 'figures', 'adversarial_examples.png'))
  standard, robust = runs['standard']['summary']['final'], runs['pgd']['summary']['final']
  # EOT on the standard model: adversarial examples that survive transformations.
  run = runs_lib.prepare(sweep.sweep_configs(config, 'train_method', ['standard'])[0],
                     runs['standard']['workdir'])
  eot_result, eot_figure = run.workload.eot_comparison(
      loop.restore_trained(run), run.data['test'], run.workdir)
  figures.append(eot_figure)
  return report.Section(
      title='Adversarial examples and adversarial training',
      paragraphs=[
          'A perturbation too small to change what a person sees, x + eps * '
          'sign(dJ/dx) iterated and projected (PGD, Madry et al. 2018), flips '
          'confident predictions. Training on such worst-case inputs is the '
          f'defence. Here a small CNN on scikit-learn\'s digits, {config.num_steps} '
          f'steps, trained on clean inputs or on PGD-{a.train_steps} examples '
          f'(eps {a.eps:g} in {a.norm}).',
          f'Measured here: standard training reaches {standard["eval/accuracy"]:.1%} '
          f'clean but {standard["eval/robust_accuracy"]:.1%} under attack; PGD '
          f'training keeps {robust["eval/robust_accuracy"]:.1%} under the same '
          f'attack at {robust["eval/accuracy"]:.1%} clean.',
          'Robust adversarial examples (Expectation over Transformation, Athalye '
          'et al. 2018) optimize the expected loss over random rotations, shifts, '
          'scalings, brightness changes and noise. Measured here on '
          f'{eot_result["num_examples"]} test digits against the standard model at '
          f'eps {eot_result["eps"]:g}: under fresh random transformations, EOT '
          f'examples stay adversarial {eot_result["survival_eot"]:.1%} of the time, '
          f'plain PGD examples {eot_result["survival_pgd"]:.1%} (clean images are '
          f'misclassified {eot_result["survival_clean"]:.1%} of the time).',
          'Figures: for each model, test images with their predicted class and '
          'confidence, the perturbation (amplified), and the adversarial example; '
          'then one digit, its PGD and its EOT example under the same six random '
          'transformations, titled with the predicted class (red: fooled).'],
      table=table, figures=figures)


def diffusion_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  config = load('diffusion.py:tiny' if quick else 'diffusion.py:digits')
  if not quick:  # The tour's evaluation: two fast samplers, fewer samples.
    config.eval.fid_samplers = ('ddim:50', 'dpm_solver:20')
    config.eval.num_samples = 1000
    config.eval.accuracy_samples = 50
    config.eval.bpd_examples = 100
  run = runs_lib.prepare(config, workdir)
  summary = loop.run_training(run)
  result = {'num_samples': 0, 'fid': {}, 'fid_floor': None,
            'classifier_test_accuracy': float('nan')}
  if not quick:  # tests/test_diffusion.py covers the evaluation.
    result = diffusion_scores.evaluate_generation(run.workload, loop.restore_trained(run),
                                                  run.data, workdir, say=lambda _: None)
  figures = [os.path.join(workdir, 'figures', name) for name in
             ('diffusion_forward.png', 'diffusion_reverse.png',
              'diffusion_samples_guided.png', 'diffusion_samples.png', 'fid_vs_steps.png')
             if os.path.isfile(os.path.join(workdir, 'figures', name))]
  table = [['sampler', 'steps', f'FID ({result["num_samples"]} samples)']]
  for name, points in result['fid'].items():
    for steps, fid in points.items():
      table.append([name, steps, fid])
  table.append(['real training images (floor)', '', result['fid_floor']])
  d, s = config.diffusion, config.sample
  setting = result.get('conditional_setting', {})
  return report.Section(
      title='Diffusion models: generating images by removing noise',
      paragraphs=[
          'A diffusion model learns to undo a fixed noising process: the forward '
          'process blends an image with Gaussian noise until nothing of it is left; '
          'a network (a small UNet) learns to predict the noise in a noisy image, '
          'and sampling starts from pure noise and removes it step by step (Ho et '
          f'al. 2020). Here: {d.num_timesteps} noise levels ({d.schedule} schedule), '
          f'{config.num_steps} training steps on scikit-learn\'s 8x8 digits, the '
          'class label given to the network and dropped 10 % of the time so that '
          'one network also learns the unconditional model; classifier-free '
          'guidance (Ho & Salimans 2022) mixes the two when sampling, the '
          'miniature of text-to-image.',
          f'Measured here: the final test denoising loss is '
          f'{summary["final"]["eval/loss"]:.4f}. A CNN trained on the same digits '
          f'(test accuracy {result["classifier_test_accuracy"]:.1%}) labels the '
          f'guided samples ({setting.get("sampler", s.sampler)}, '
          f'{setting.get("steps", s.steps)} steps, scale '
          f'{setting.get("guidance", 0):g}) as the class asked for '
          f'{result.get("conditional_accuracy", float("nan")):.1%} of the time. '
          'FID compares the statistics of that classifier\'s features on samples '
          'and on the test set (Inception features do not suit tiny grey images); '
          'real training images set the floor. The negative ELBO on test images is '
          f'{result.get("bits_per_dim", float("nan")):.3f} bits per dimension.',
          'Figures: forward noising of test digits; one sample denoised step by '
          'step; guided samples per class; unconditional samples; FID against the '
          'number of sampler steps.'],
      table=table, figures=figures)


def lm_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  """The emergence sweep in miniature; Shakespeare samples when its text is here."""
  config = load('emergence.py:tiny' if quick else 'emergence.py:tour')
  key, _, values = config.sweep.partition('=')
  runs = sweep.run_sweep(config, workdir, key, values.split(','))
  figures = sweep.sweep_figures('lm', runs, os.path.join(workdir, 'figures'))
  table = [['width', 'parameters', 'held-out exact match', 'validation loss']]
  for value, run in runs.items():
    final = run['summary']['final']
    table.append([value, lm_lib.parameter_count(run['workdir']),
                  final['eval/exact_match'], final['eval/loss']])
  d = config.data
  paragraphs = [
      'A language model learns by predicting the next token of a text, and '
      'generates by sampling one token after another. Since no text ships with a '
      f'package, the tour teaches it arithmetic: {d.num_train:,} {d.digits}-digit '
      'additions written as text ("12+34=" followed by the sum, written last digit '
      f'first), one decoder-only Transformer per width ({config.model.num_layers} '
      f'layers, {config.num_steps} steps each, the same data), scored by exact '
      f'match on {d.num_test:,} held-out problems never seen in training.',
      'Emergence (the lecture\'s last slide): below some size the models stay near '
      'zero; past it, accuracy jumps. configs/emergence.py runs the 3-digit sweep '
      'of the README.']
  shakespeare = load('lm.py:shakespeare_char_cpu')
  preformatted = []
  if not quick and _available('tiny_shakespeare', shakespeare.data.dir):
    shakespeare.num_steps = 1000
    shakespeare.eval_every = 1000
    shakespeare.optim.warmup_steps = 50
    text_dir = os.path.join(os.path.dirname(workdir), 'shakespeare')
    summary = runs_lib.train(shakespeare, text_dir)
    with open(os.path.join(text_dir, 'figures', 'samples.txt')) as f:
      samples = f.read()
    paragraphs.append(
        f'Tiny Shakespeare was found in the data dir, so a character-level model '
        f'(0.8M parameters) trained on it for {shakespeare.num_steps} steps: validation '
        f'loss {summary["final"]["eval/loss"]:.3f} nats per character. Its samples:')
    preformatted.append(samples)
  return report.Section(title='Language models: next-token prediction and emergence',
                        paragraphs=paragraphs, table=table, figures=figures,
                        preformatted=preformatted)


def uncertainty_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  """The cubic regression per method, and digits vs inverted digits."""
  cubic = load('uncertainty.py:tiny_cubic' if quick else 'uncertainty.py:cubic')
  images = load('uncertainty.py:tiny' if quick else 'uncertainty.py:digits')
  # --quick: one regression and two classification runs, of 12 steps each.
  regression_methods = ('ensemble',) if quick else ('ensemble', 'mc_dropout', 'evidential')
  image_methods = ('softmax', 'ensemble') if quick else uncertainty_lib.METHODS
  cubic_runs = sweep.run_sweep(cubic, os.path.join(workdir, 'cubic'), 'method',
                               regression_methods)
  image_runs = sweep.run_sweep(images, os.path.join(workdir, 'digits'), 'method',
                               image_methods)
  fig_dir = os.path.join(workdir, 'figures')
  figures = (sweep.sweep_figures('uncertainty', cubic_runs, fig_dir)
             + sweep.sweep_figures('uncertainty', image_runs, fig_dir))
  fits = {m: uncertainty_lib.read_result(run['workdir']) for m, run in cubic_runs.items()}
  results = {m: uncertainty_lib.read_result(run['workdir']) for m, run in image_runs.items()}
  table = [['method', 'test accuracy', 'ECE (15 bins)', 'AUROC entropy',
            'AUROC mutual information', 'AUROC vacuity']]
  for method, r in results.items():
    table.append([method, r['accuracy'], r['ece']] + [
        r['auroc'].get(name) for name in ('entropy', 'mutual_info', 'vacuity')])
  best, score = max(((m, name) for m, r in results.items() for name in r['auroc']),
                    key=lambda pair: results[pair[0]]['auroc'][pair[1]])
  return report.Section(
      title='Uncertainty: does the network know what it doesn\'t know?',
      paragraphs=[
          'A network fits its training data well and says nothing about where '
          'that data ends. Four remedies, each trained here with the shared loop: '
          'a deep ensemble (Lakshminarayanan et al. 2017; '
          f'{cubic.ensemble.members} networks trained in one vmapped step), MC '
          f'dropout (Gal & Ghahramani 2016; {cubic.mc_dropout.samples} dropout passes '
          'at test), and evidential networks that output a distribution over '
          'distributions in one pass (Amini et al. 2020 for regression, Sensoy et '
          'al. 2018 for classification), against a plain softmax network.',
          f'Regression: y = x^3 + N(0, {cubic.cubic.noise:g}^2) with '
          f'{cubic.cubic.num_train} training points on [-4, 4], shown on [-6, 6]. '
          'Aleatoric uncertainty is the noise the model predicts, epistemic its '
          'uncertainty about the function. Measured here, the mean epistemic std '
          'on |x| > 4.5 over that on |x| < 4: ' + ', '.join(
              f'{m} {r["epistemic_ratio"]:.1f}x' for m, r in fits.items())
          + '; the mean aleatoric std inside (true noise std '
          f'{cubic.cubic.noise:g}): ' + ', '.join(
              f'{m} {r["aleatoric_in"]:.2f}' for m, r in fits.items()) + '.',
          f'Classification: scikit-learn\'s digits ({images.num_steps} steps each). '
          'Out-of-distribution images are the test digits with their grey levels '
          'inverted (bright background, dark strokes): nothing like them was seen '
          'in training. AUROC is the probability that an inverted digit gets a '
          'higher uncertainty score than a normal one, over all pairs of the 360 '
          'test images (0.5: no separation). ECE is the 15-bin expected calibration '
          f'error on the test digits. Best separation here: {best} by '
          f'{score.replace("_", " ")}, AUROC {results[best]["auroc"][score]:.3f}.',
          'Figures: the regression bands per method; per method, the uncertainty '
          'score on normal vs inverted digits; reliability diagrams (bars on the '
          'diagonal: calibrated). The README gives the same on MNIST vs '
          'Fashion-MNIST.'],
      table=table, figures=figures)


def bias_section(load: ConfigLoader, workdir: str, quick: bool) -> report.Section:
  """Coloured-background digits: the standard model, group reweighting, DB-VAE."""
  config = load('bias.py:tiny' if quick else 'bias.py:digits')
  runs = sweep.run_sweep(config, workdir, 'method', bias_lib.METHODS)
  fig_dir = os.path.join(workdir, 'figures')
  os.makedirs(fig_dir, exist_ok=True)
  finals = {m: run['summary']['final'] for m, run in runs.items()}
  bars = bias_lib.subgroup_bars(finals, os.path.join(fig_dir, 'subgroup_accuracy.png'))
  standard_dir = os.path.join(runs['standard']['workdir'], 'figures')
  figures = ([os.path.join(standard_dir, 'bias_examples.png'), bars]
             + [os.path.join(run['workdir'], 'figures', 'saliency.png') for run in runs.values()]
             + [os.path.join(runs[m]['workdir'], 'figures', 'colour_swap.png')
                for m in ('standard', 'dbvae')])
  gaps = ', '.join(f'{m} {f["eval/accuracy_gap"]:+.1%}' for m, f in finals.items())
  d = config.dbvae
  return report.Section(
      title='Algorithmic bias: a spurious colour, and debiasing',
      paragraphs=[
          'A network learns whatever feature predicts its labels most easily. Here '
          'the digits are drawn on coloured backgrounds, and in training the colour '
          f'matches the class for {config.bias.aligned_fraction:.0%} of the images; '
          'at test time colours are random. Test images whose colour happens to be '
          'their class\'s are "bias-aligned", the others "bias-conflicting": a model '
          'that learned "colour means class" does well on the first and badly on the '
          'second.',
          'Three trainings of the same small CNN on scikit-learn\'s digits '
          f'({config.num_steps} steps each): plain cross-entropy (standard); '
          'cross-entropy weighted inversely to the training frequency of each '
          '(class, colour) group (reweight, which must know the colour of every '
          'training image); and the debiasing VAE of Amini et al. (2019) (dbvae): a '
          'classifier and a VAE share one encoder, and training images are drawn with '
          'probability inversely proportional to the density of their latent code, '
          f'estimated per class with {d.bins}-bin histograms per latent dimension '
          f'(every {d.refresh_every} steps). DB-VAE never sees the colour: the VAE '
          'finds that colour varies, and the rare colours of each class get drawn '
          'more often.',
          f'Measured here, the gap between aligned and conflicting test accuracy: '
          f'{gaps}. "conflicting -> colour class" is how often a conflicting image '
          'is classified as the class of its colour.',
          'Figures: training and test images; accuracy per subgroup and method; per '
          'method, saliency maps (|d logit / d pixel|: where the prediction is '
          'sensitive) on aligned and conflicting test images; and one digit on all '
          'ten backgrounds, for the standard model and for DB-VAE. The README gives '
          'the same on MNIST.'],
      table=bias_lib.method_table(runs), figures=figures)


def _available(name: str, data_dir: str) -> bool:
  try:
    data_lib.check_available(name, data_dir)
  except UsageError:
    return False
  return True


SECTIONS = {
    'approximation': approximation_section, 'generalization': generalization_section,
    'adversarial': adversarial_section, 'diffusion': diffusion_section, 'lm': lm_section,
    'uncertainty': uncertainty_section, 'bias': bias_section,
}


def run_tour(workdir: str, configs_dir: str = 'configs', quick: bool = False) -> str:
  """Runs every experiment of the tour, saying on stderr which one is next;
  returns the path of report.html."""
  load = config_loader(configs_dir)
  progress = Progress('demo', len(SECTIONS), 'experiments done', every_s=0)
  sections = []
  for name, section in SECTIONS.items():
    progress.update(len(sections), f'next: {name}')
    sections.append(section(load, os.path.join(workdir, name), quick))
  progress.update(len(sections), 'all')
  return report.write(
      os.path.join(workdir, 'report.html'), 'frontiers_jax: the New Frontiers lecture tour',
      sections, intro='Each section is one experiment of MIT 6.S191 "New Frontiers", '
      'trained here from its config file in configs/ on data that ships with the '
      'packages. Every number on this page was measured by this run.')
