from jinja2.runtime import LoopContext, Macro, Markup, Namespace, TemplateNotFound, TemplateReference, TemplateRuntimeError, Undefined, escape, identity, internalcode, markup_join, missing, str_join
name = 'instance-env.j2'

def root(context, missing=missing):
    resolve = context.resolve_or_missing
    undefined = environment.undefined
    concat = environment.concat
    cond_expr_undefined = Undefined
    if 0: yield None
    l_0_header = resolve('header')
    l_0_instance = resolve('instance')
    try:
        t_1 = environment.filters['env_file_value']
    except KeyError:
        @internalcode
        def t_1(*unused):
            raise TemplateRuntimeError("No filter named 'env_file_value' found.")
    try:
        t_2 = environment.filters['env_name']
    except KeyError:
        @internalcode
        def t_2(*unused):
            raise TemplateRuntimeError("No filter named 'env_name' found.")
    pass
    yield str((undefined(name='header') if l_0_header is missing else l_0_header))
    yield '\n# The environment of one Ollama replica, read by ollama@.service through EnvironmentFile=.\n'
    for (l_1_key, l_1_value) in environment.getattr((undefined(name='instance') if l_0_instance is missing else l_0_instance), 'env'):
        _loop_vars = {}
        pass
        yield str(t_2(l_1_key))
        yield '='
        yield str(t_1(l_1_value))
        yield '\n'
    l_1_key = l_1_value = missing

blocks = {}
debug_info = '1=25&3=27&4=30'