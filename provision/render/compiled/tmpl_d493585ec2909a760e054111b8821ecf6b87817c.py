from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'Modelfile.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_base = resolve('base')
    l_0_model = resolve('model')
    try:
        t_1 = environment.filters['modelfile_value']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'modelfile_value' found.")
    try:
        t_2 = environment.tests['none']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No test named 'none' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\nFROM '
    yield str(t_1((undefined(name='base') if l_0_base is missing else l_0_base)))
    yield '\nPARAMETER num_ctx '
    yield str(t_1(environment.getattr(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'settings'), 'ctx_tokens')))
    yield '\n'
    if environment.getattr(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'entry'), 'num_batch'):
        pass
        yield 'PARAMETER num_batch '
        yield str(t_1(environment.getattr(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'entry'), 'num_batch')))
        yield '\n'
    if (not t_2(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'num_gpu'))):
        pass
        yield 'PARAMETER num_gpu '
        yield str(t_1(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'num_gpu')))
        yield '\n'
    if (not t_2(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'main_gpu'))):
        pass
        yield 'PARAMETER main_gpu '
        yield str(t_1(environment.getattr((undefined(name='model') if l_0_model is missing else l_0_model), 'main_gpu')))
        yield '\n'

blocks = {}
debug_info = '1=26&2=28&3=30&4=32&5=35&7=37&8=40&11=42&12=45'